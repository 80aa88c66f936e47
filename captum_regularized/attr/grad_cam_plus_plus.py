"""Grad-CAM++ (Chattopadhay, Sarkar, Howlader and Balasubramanian, WACV 2018).

One forward pass keeps the layer's activation, one backward pass (stopping at the layer)
gives its gradient, and the channel weights follow in closed form from that gradient.
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
    alphas = torch.where(denominators != 0, squared / denominators, torch.zeros_like(denominators))
    return (alphas * torch.relu(gradients)).sum(dim=(2, 3))


class LayerGradCamPlusPlus(LayerCam):
    r"""Grad-CAM++: channel weights from positive gradients, each pixel weighted by ``alpha``.

    Grad-CAM weights channel ``k`` of a layer's activation ``A`` ``(B, K, h, w)`` by the
    spatial mean of ``g = dS/dA``. Grad-CAM++ takes only the positive gradients and gives
    every position its own coefficient, so that several separate objects of the class
    count alike (the closed form of the paper's eq. 19, for a logit ``S``):

    .. math::

        \alpha_{kij} = \frac{g_{kij}^2}
                            {2 g_{kij}^2 + \big(\sum_{ab} A_{kab}\big)\, g_{kij}^3 + \epsilon},
        \qquad
        w_k = \sum_{ij} \alpha_{kij}\, \mathrm{relu}(g_{kij}), \qquad
        L = \mathrm{relu}\Big(\sum_k w_k A_k\Big),

    with ``alpha = 0`` where the denominator is 0. ``eps=0`` is the paper's formula,
    ``eps=1e-6`` pytorch-grad-cam's (:doc:`/design_notes/attribution_maps`).

    Parameters
    ----------
    forward_func, layer, device_ids
        As in ``captum.attr.LayerGradCam``: the model, the layer explained (it runs once
        per forward pass and gives one tensor), unused device ids.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> cam = LayerGradCamPlusPlus(model, model.block3)
    >>> maps = cam.attribute(torch.rand(2, 3, 16, 16), target=[0, 2])
    >>> maps.shape, bool((maps >= 0).all())
    (torch.Size([2, 1, 4, 4]), True)
    """

    @log_usage()
    def attribute(  # type: ignore[override]
        self, inputs: TensorOrTuple, target: TargetType = None,
        additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
        relu_attributions: bool = True, attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None, *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None, eps: float = 0.0,
    ) -> torch.Tensor:
        """Grad-CAM++ maps ``(B, 1, h, w)`` in the layer's resolution, in the inputs' dtype.

        The positional arguments are those of ``captum.attr.LayerGradCam.attribute``
        (``attr_dim_summation=False`` gives the ``(B, K, h, w)`` maps ``w_k A_k``);
        ``target`` also takes pytorch-grad-cam's target callables.

        Parameters
        ----------
        reshape_transform : callable, optional
            Turns the layer's activation (and its gradient) into ``(B, K, h, w)``, e.g.
            :func:`~captum_regularized.attr.vit_tokens_to_map`.
        eps : float
            Added to the denominator of ``alpha`` (finite, >= 0).

        Raises
        ------
        ValueError, TypeError
            For bad inputs, target, options (each named) or layer (one that does not run,
            runs twice or does not reach the score; a non-4-D activation).
        RuntimeError
            Inside ``torch.inference_mode()``.
        """
        call = attribution_call(type(self).__name__, inputs, additional_forward_args)
        model = find_module(self.forward_func)
        batch = check_attribution_inputs(call.inputs, model)
        check_reshape_transform(reshape_transform)
        check_grad_kwargs(grad_kwargs)
        _check_eps(eps)
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


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
