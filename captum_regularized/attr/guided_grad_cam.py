"""Guided Grad-CAM (Selvaraju et al.): guided backprop weighted by an upsampled Grad-CAM.

Called like ``captum.attr.GuidedGradCam``, equal to it on ``nn.ReLU`` models; the guided
rule acts on every rectifying activation (:mod:`captum_regularized._internal.guided_relu`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution, LayerAttribution
from torch import nn

from captum_regularized._internal.captum_compat import (
    AttributionCall,
    TargetType,
    TensorOrTuple,
    WithoutFutures,
    attribution_call,
    log_usage,
)
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.guided_relu import (
    GuidedActivationSwitch,
    check_guided_model,
    check_guided_rule,
    guided_forward,
)
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.targets import target_scores
from captum_regularized._internal.user_feedback import warn_if_training

__all__ = ["GuidedGradCam"]

INTERPOLATE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear",
                     "area")
"""The ``interpolate_mode`` values (``torch.nn.functional.interpolate``'s modes)."""

Gradients = tuple[torch.Tensor | None, ...]


class GuidedGradCam(WithoutFutures, GradientAttribution):
    r"""Guided Grad-CAM: the guided-backprop map times the layer's upsampled Grad-CAM.

    With ``A`` the layer's activation ``(B, K, h, w)`` and ``S`` the target score,

    .. math::

        L = \mathrm{relu}\Big(\sum_k w_k A_k\Big), \quad
        w_k = \operatorname{mean}_{ij} \frac{\partial S}{\partial A_{kij}}, \qquad
        M = \mathrm{GB}(x) \odot \mathrm{upsample}(L),

    where ``GB`` is the map of :class:`~captum_regularized.attr.GuidedBackprop` and
    ``L`` is interpolated to each input's spatial size (Selvaraju et al., ICCV 2017).

    Parameters
    ----------
    model, layer, device_ids
        As in ``captum.attr.GuidedGradCam``: the model, the layer whose activation gives
        the Grad-CAM map (it runs once per forward pass), unused device ids.
    rule : {"gated", "ungated"}
        The guided rule (keyword only).

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> maps = GuidedGradCam(model, model.block3).attribute(torch.rand(2, 3, 16, 16), target=1)
    >>> maps.shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self, model: Callable[..., Any], layer: nn.Module, device_ids: list[int] | None = None,
        *, rule: str = "gated",
    ) -> None:
        module = check_guided_model(model, "GuidedGradCam")
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        if module is not None and not any(m is layer for m in module.modules()):
            raise ValueError(
                f"layer ({type(layer).__name__}) is not a submodule of the model passed as model"
            )
        super().__init__(model)
        self.layer = layer
        self.device_ids = device_ids
        self.rule = check_guided_rule(rule)

    @log_usage()
    def attribute(
        self, inputs: TensorOrTuple, target: TargetType = None,
        additional_forward_args: Any = None, interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> TensorOrTuple:
        """Guided Grad-CAM maps of ``inputs`` for each example's target score.

        Parameters
        ----------
        inputs, target, additional_forward_args
            As in :meth:`GuidedBackprop.attribute
            <captum_regularized.attr.GuidedBackprop.attribute>`; inputs are
            ``(B, C, *spatial)``.
        interpolate_mode : str
            How the Grad-CAM map is resized to each input: one of :data:`INTERPOLATE_MODES`.
        attribute_to_layer_input : bool
            Use the layer's (first) input instead of its output.
        reshape_transform : callable, optional
            Turns the layer's activation (and its gradient) into ``(B, K, *spatial)``,
            e.g. :func:`~captum_regularized.attr.vit_tokens_to_map` (not in Captum).

        Returns
        -------
        Tensor or tuple of Tensor
            Maps with the form, shapes and dtypes of ``inputs``.

        Raises
        ------
        ValueError, TypeError
            For a bad argument (named in the message), a layer that does not run once or
            does not reach the output, a map that cannot be interpolated to an input, or
            no activation the guided rule knows.
        RuntimeError
            Inside ``torch.inference_mode()``; when the model modifies its input in place.
        """
        call = attribution_call(type(self).__name__, inputs, additional_forward_args)
        model = find_module(self.forward_func)
        check_attribution_inputs(call.inputs, model)
        _check_options(interpolate_mode, reshape_transform)
        warn_if_training(self.forward_func, type(self).__name__)
        guided, activation, gradient = self._gradients(
            model, call, target, attribute_to_layer_input)
        cam = _grad_cam(activation.detach(), gradient, reshape_transform)
        maps = []
        for index, (grad, x) in enumerate(zip(guided, call.inputs)):
            upsampled = _upsampled(cam, x, index, interpolate_mode)
            guided_map = torch.zeros_like(x) if grad is None else grad
            maps.append((guided_map * upsampled).to(x.dtype))
        return call.output(tuple(maps))

    def _gradients(
        self, model: nn.Module | None, call: AttributionCall, target: TargetType, use_input: bool
    ) -> tuple[Gradients, torch.Tensor, torch.Tensor]:
        """The guided input gradients, the layer's activation and its plain gradient."""
        switch = GuidedActivationSwitch(self.rule)
        with preserved_model(model) as hooks, kept_batchnorm_statistics(model), torch.enable_grad():
            tap = LayerTap(self.layer, hooks, use_input, stop_at_layer=False)
            leaves = tuple(fresh_leaf(x) for x in call.inputs)
            with tap.tapping():
                output = guided_forward(self.forward_func, leaves, call.additional_forward_args,
                                        switch)
            activation = tap.activation()
            total = target_scores(output, target).sum()
            with switch.guided():
                guided = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
            gradient = tap.gradient(total)  # the plain gradient, on the same graph
        return guided, activation, gradient


def _check_options(interpolate_mode: object, reshape_transform: object) -> None:
    if interpolate_mode not in INTERPOLATE_MODES:
        raise ValueError(
            f"interpolate_mode must be one of {list(INTERPOLATE_MODES)}, "
            f"got {interpolate_mode!r}"
        )
    if reshape_transform is not None and not callable(reshape_transform):
        raise TypeError(
            f"reshape_transform must be callable, got {type(reshape_transform).__name__}"
        )


def _grad_cam(
    activation: torch.Tensor, gradient: torch.Tensor,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Grad-CAM ``relu(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``dS/dA_k``."""
    if reshape_transform is not None:
        activation, gradient = reshape_transform(activation), reshape_transform(gradient)
    accumulate = torch.promote_types(activation.dtype, torch.float32)
    activation, gradient = activation.to(accumulate), gradient.to(accumulate)
    if gradient.dim() > 2:
        gradient = gradient.mean(dim=tuple(range(2, gradient.dim())), keepdim=True)
    return F.relu((gradient * activation).sum(dim=1, keepdim=True))


def _upsampled(cam: torch.Tensor, inputs: torch.Tensor, index: int, mode: str) -> torch.Tensor:
    size = tuple(inputs.shape[2:])
    if not size or cam.dim() - 2 != len(size):
        raise ValueError(
            f"the Grad-CAM map has shape {tuple(cam.shape)} and cannot be interpolated to "
            f"inputs[{index}] of shape {tuple(inputs.shape)}: the layer's activation needs the "
            "batch, a channel dimension and as many spatial dimensions as the input (pass a "
            "reshape_transform for token layers, e.g. attr.vit_tokens_to_map)"
        )
    return LayerAttribution.interpolate(cam, size, interpolate_mode=mode)
