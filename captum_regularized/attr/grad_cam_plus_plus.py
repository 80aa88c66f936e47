"""Grad-CAM++ (Chattopadhay, Sarkar, Howlader and Balasubramanian, WACV 2018).

:class:`LayerGradCamPlusPlus`'s docstring gives the maths. One forward pass keeps the
layer's activation (:class:`~captum_regularized._internal.layer_tap.LayerTap`, the
backward pass stops at the layer), one backward pass gives its gradient, and the
channel weights follow in closed form from that gradient alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import (
    TargetType,
    TensorOrTuple,
    attribution_call,
    log_usage,
)
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.layer_maps import (
    LayerCam,
    check_grad_kwargs,
    check_output_batch,
    check_reshape_transform,
    layer_maps,
    weighted_maps,
)
from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.targets import per_example_score_targets, target_scores
from captum_regularized._internal.user_feedback import warn_if_training

__all__ = ["LayerGradCamPlusPlus", "grad_cam_plus_plus_weights"]


def grad_cam_plus_plus_weights(
    activations: torch.Tensor, gradients: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    r"""Channel weights ``(B, K)`` of Grad-CAM++ from ``A`` and ``g = dS/dA``, ``(B, K, h, w)``.

    ``alpha_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3 + eps)`` (0 where that denominator
    is 0) and ``w_k = sum_ij alpha_kij relu(g_kij)``; see :class:`LayerGradCamPlusPlus`.

    Examples
    --------
    >>> acts = torch.ones(1, 1, 2, 2)  # sum_ab A = 4
    >>> grads = torch.tensor([[[[1.0, 0.5], [0.0, -1.0]]]])
    >>> grad_cam_plus_plus_weights(acts, grads)  # 1/6 * 1 + 1/4 * 0.5
    tensor([[0.2917]])
    """
    squared = gradients * gradients
    spatial_sums = activations.sum(dim=(2, 3), keepdim=True)
    denominators = 2 * squared + spatial_sums * squared * gradients + eps
    alphas = torch.where(
        denominators != 0, squared / denominators, torch.zeros_like(denominators)
    )
    return (alphas * torch.relu(gradients)).sum(dim=(2, 3))


class LayerGradCamPlusPlus(LayerCam):
    r"""Grad-CAM++: channel weights from positive gradients, each pixel weighted by ``alpha``.

    Grad-CAM (``captum.attr.LayerGradCam``) weights channel ``k`` of a layer's activation
    ``A`` ``(B, K, h, w)`` by the spatial mean of the gradient ``g = dS/dA`` of the target
    score ``S``. Grad-CAM++ (Chattopadhay et al., "Grad-CAM++: Improved visual
    explanations for deep convolutional networks", WACV 2018) takes only the positive
    gradients and gives every position its own coefficient ``alpha``, so that several
    separate objects of the class (each with a few strong positions) count alike:

    .. math::

        w_k = \sum_{ij} \alpha_{kij}\, \mathrm{relu}(g_{kij}), \qquad
        L = \mathrm{relu}\Big(\sum_k w_k A_k\Big).

    The paper derives ``alpha`` from the second and third derivatives of the class
    score; for the score ``Y = exp(S)`` of a logit ``S`` these are powers of the first
    derivative, which gives the closed form of its eq. 19 (the one pytorch-grad-cam
    implements):

    .. math::

        \alpha_{kij} = \frac{g_{kij}^2}
                            {2 g_{kij}^2 + \big(\sum_{ab} A_{kab}\big)\, g_{kij}^3}.

    Positions where the denominator is 0 (``g = 0``) get ``alpha = 0``. ``eps`` is added
    to the denominator: 0 (the default) is the paper's formula, ``eps=1e-6`` gives
    pytorch-grad-cam's ``GradCAMPlusPlus`` numbers (the same maps before its min-max
    scaling and resizing). That stabiliser is not scale-free: where the gradients are
    of order ``sqrt(eps)`` or smaller it, not the formula, decides ``alpha``.

    The closed form holds when ``S`` is a logit (the model returns scores before any
    softmax), as in the paper. One forward and one backward pass (stopping at the
    layer) serve the whole batch; the model is left as found (its mode, flags, hooks and
    BatchNorm running statistics). The weights are computed in at least float32 (the
    cube of small bfloat16 gradients would underflow); maps come back in the inputs'
    floating dtype, also under ``torch.autocast``.

    Parameters
    ----------
    forward_func : callable
        The model (or any function of the inputs) returning a tensor, a Hugging Face
        ``ModelOutput`` (its ``.logits`` are used) or a dict with key ``"logits"``. An
        ``nn.DataParallel`` model runs its wrapped module, on that module's device.
    layer : nn.Module
        The layer whose activation is explained, usually the last convolutional block.
        It must run exactly once per forward pass and give one tensor. For vision
        transformers see :class:`~captum_regularized.attr.LayerRSIGradCam` for the
        layer to pick and pass the matching ``reshape_transform``.
    device_ids : list of int, optional
        Kept for Captum's signature.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> cam = LayerGradCamPlusPlus(model, model.block3)
    >>> maps = cam.attribute(torch.rand(2, 3, 16, 16), target=[0, 2])
    >>> maps.shape, bool((maps >= 0).all())
    (torch.Size([2, 1, 4, 4]), True)
    >>> from captum.attr import LayerAttribution
    >>> LayerAttribution.interpolate(maps, (16, 16)).shape
    torch.Size([2, 1, 16, 16])
    """

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = True,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eps: float = 0.0,
    ) -> torch.Tensor:
        """Grad-CAM++ maps of shape ``(B, 1, h, w)`` in the layer's resolution.

        The positional arguments are those of ``captum.attr.LayerGradCam.attribute``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs, batch in dim 0 (a tuple for multi-input models); not
            modified.
        target : int, tuple, list, Tensor, callable or None
            Captum's target forms; ``None`` on a ``(B, classes > 1)`` output is the
            predicted class. pytorch-grad-cam's target callables are accepted too
            (``ClassifierOutputTarget(k)``, any ``score(output) -> (B,)``, or a list of
            callables, one per example, each given its example's output row).
        additional_forward_args : any, optional
            Extra arguments passed to ``forward_func`` after the inputs.
        attribute_to_layer_input : bool
            Use the layer's (first) input instead of its output.
        relu_attributions : bool
            Apply the final ReLU (Grad-CAM++ has it; default True).
        attr_dim_summation : bool
            Sum the weighted channels into one map (default); ``False`` returns the
            per-channel maps ``w_k A_k``, ``(B, K, h, w)`` (ReLU applied to each).
        grad_kwargs : dict, optional
            Passed on to ``torch.autograd.grad``, as in Captum's ``LayerGradCam``.
        reshape_transform : callable, optional
            Turns the layer's activation (and, identically, its gradient) into
            ``(B, K, h, w)``, e.g. :func:`~captum_regularized.attr.vit_tokens_to_map`.
        eps : float
            Added to the denominator of ``alpha`` (finite, >= 0): 0 is the paper's
            formula, 1e-6 pytorch-grad-cam's.

        Returns
        -------
        Tensor
            ``(B, 1, h, w)`` (``(B, K, h, w)`` without ``attr_dim_summation``) in the
            inputs' floating dtype; upsample with ``LayerAttribution.interpolate``.

        Raises
        ------
        ValueError
            Non-finite inputs, inputs without a shared batch size or on another device
            than the model; a bad ``target`` (out of range, wrong length); ``eps``
            negative or not finite; an output that does not keep the batch in dim 0; a
            layer that does not run, runs twice, runs with
            autograd off inside ``forward_func`` or does not reach the score; an
            activation that is not 4-D after ``reshape_transform``.
        TypeError
            Non-tensor or non-floating inputs, a target of the wrong type, a
            ``reshape_transform`` that is not callable, ``grad_kwargs`` that is not a
            dict, ``eps`` that is not a number.
        RuntimeError
            Inside ``torch.inference_mode()``.

        Warns
        -----
        UserWarning
            When the model has BatchNorm or Dropout modules in train mode (call
            ``model.eval()`` first); once per call site under Python's default filter.
        """
        call = attribution_call(type(self).__name__, inputs, additional_forward_args)
        model = find_module(self.forward_func)
        batch = check_attribution_inputs(call.inputs, model)
        check_reshape_transform(reshape_transform)
        check_grad_kwargs(grad_kwargs)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        target = per_example_score_targets(target)
        warn_if_training(self.forward_func, type(self).__name__)
        with preserved_model(model) as hooks, kept_batchnorm_statistics(model):
            tap = LayerTap(self.layer, hooks, use_input=attribute_to_layer_input)
            output, activation = tap.run(
                self.forward_func, call.inputs, call.additional_forward_args
            )
            check_output_batch(output, batch)
            with torch.enable_grad():
                scores = target_scores(output, target)
            gradient = tap.gradient(scores, grad_kwargs)
        activations = layer_maps(activation.detach(), reshape_transform)
        weights = grad_cam_plus_plus_weights(
            activations, layer_maps(gradient, reshape_transform), float(eps)
        )
        maps = weighted_maps(weights, activations, relu_attributions, attr_dim_summation)
        out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in call.inputs))
        return maps.to(out_dtype)
