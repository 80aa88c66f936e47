"""What the channel-weighting layer methods (Grad-CAM++, Score-CAM) share.

:class:`LayerCam` (Captum's layer-method constructor and properties), the layer check
(:func:`checked_layer_method`), the layer's values as float maps (:func:`layer_maps`)
and the weighted sum of the maps (:func:`weighted_maps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution, LayerAttribution
from torch import nn

from captum_regularized._internal.captum_compat import WithoutFutures
from captum_regularized._internal.model_state import find_module, unwrap_data_parallel

__all__ = [
    "LayerCam", "check_grad_kwargs", "check_output_batch", "check_reshape_transform",
    "checked_layer_method", "layer_maps", "weighted_maps",
]

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


class LayerCam(WithoutFutures, LayerAttribution, GradientAttribution):
    """A class activation map of one layer, called like Captum's ``LayerGradCam``.

    The constructor checks the layer; subclasses write ``attribute``.
    """

    def __init__(
        self, forward_func: Callable[..., Any], layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        forward_func = checked_layer_method(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    def has_convergence_delta(self) -> bool:
        """False: a CAM has no completeness property to check."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """False: the weights multiply the layer's activation, not the inputs."""
        return False


def checked_layer_method(forward_func: Callable[..., Any], layer: object) -> Callable[..., Any]:
    """The ``forward_func`` a layer method runs (``nn.DataParallel`` unwrapped), ``layer`` checked.

    ``TypeError`` when ``layer`` is not a module, ``ValueError`` when the model does not
    contain it.
    """
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
    forward_func = unwrap_data_parallel(forward_func)
    model = find_module(forward_func)
    if model is not None and not any(module is layer for module in model.modules()):
        raise ValueError(
            f"layer ({type(layer).__name__}) is not a submodule of the model passed as "
            "forward_func"
        )
    return forward_func


def check_grad_kwargs(grad_kwargs: object) -> None:
    """Raise ``TypeError`` unless ``grad_kwargs`` (for ``torch.autograd.grad``) is a dict or None.
    """
    if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
        raise TypeError(f"grad_kwargs must be a dict or None, got {type(grad_kwargs).__name__}")


def check_reshape_transform(reshape_transform: object) -> None:
    """Raise ``TypeError`` unless ``reshape_transform`` is ``None`` or callable."""
    if reshape_transform is not None and not callable(reshape_transform):
        raise TypeError(
            f"reshape_transform must be callable or None, got {type(reshape_transform).__name__}"
        )


def check_output_batch(output: torch.Tensor, rows: int) -> None:
    """Raise ``ValueError`` unless the model output has ``rows`` rows in dim 0."""
    if output.dim() == 0 or output.shape[0] != rows:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)} for {rows} input rows; its "
            "output must keep the batch in dim 0"
        )


def layer_maps(values: torch.Tensor, reshape_transform: ReshapeTransform | None) -> torch.Tensor:
    """A layer's values after ``reshape_transform`` as at least float32 maps ``(B, K, h, w)``.

    ``ValueError`` when they are not 4-D.

    Examples
    --------
    >>> layer_maps(torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16), None).dtype
    torch.float32
    >>> layer_maps(torch.zeros(2, 5), None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the layer's activation must have shape (batch, channels, height, width), ...
    """
    if reshape_transform is not None:
        values = reshape_transform(values)
    if not isinstance(values, torch.Tensor) or values.dim() != 4:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        hint = "" if reshape_transform is not None else "; pass a reshape_transform"
        raise ValueError(
            "the layer's activation must have shape (batch, channels, height, width), got "
            f"shape {got}{hint}"
        )
    return values.to(torch.promote_types(values.dtype, torch.float32))


def weighted_maps(
    weights: torch.Tensor, activations: torch.Tensor, relu_attributions: bool,
    attr_dim_summation: bool,
) -> torch.Tensor:
    """``sum_k w_k A_k`` ``(B, 1, h, w)`` or ``w_k A_k`` ``(B, K, h, w)``, ReLU'd on request.

    Examples
    --------
    >>> maps = torch.ones(1, 2, 2, 2)
    >>> weighted_maps(torch.tensor([[1.0, -3.0]]), maps, True, True).flatten().tolist()
    [0.0, 0.0, 0.0, 0.0]
    >>> weighted_maps(torch.tensor([[1.0, -3.0]]), maps, False, False)[0, :, 0, 0].tolist()
    [1.0, -3.0]
    """
    maps = weights[:, :, None, None] * activations
    if attr_dim_summation:
        maps = maps.sum(dim=1, keepdim=True)
    return torch.relu(maps) if relu_attributions else maps
