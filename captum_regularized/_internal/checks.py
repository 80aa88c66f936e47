"""Input checks shared by every public entry point: clear errors, never silent garbage.

Types, batch sizes, devices, finiteness, and (:func:`check_inputs_fit_model`) the
mistakes PyTorch would report from inside the first convolution: another dtype than
the model's, a ``(B, H, W, C)`` batch, one ``(C, H, W)`` image without its batch
dimension. Only the finiteness checks synchronise with the host.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from captum_regularized._internal.model_state import model_device


def check_autograd_available(who: str) -> None:
    """Raise ``RuntimeError`` naming inference mode when gradients cannot be taken."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} needs autograd and cannot run inside torch.inference_mode(); "
            "call it outside the block or under torch.inference_mode(False)"
        )


def check_floating(inputs: Sequence[torch.Tensor], name: str = "inputs") -> None:
    """Raise ``TypeError`` unless every tensor has a floating dtype."""
    for index, tensor in enumerate(inputs):
        if not tensor.is_floating_point():
            raise TypeError(
                f"{name}[{index}] must be a floating-point tensor (gradients need one), "
                f"got {tensor.dtype}"
            )


def check_finite(inputs: Sequence[torch.Tensor], name: str = "inputs") -> None:
    """Raise ``ValueError`` when any tensor holds NaN or infinity (one check per call)."""
    for index, tensor in enumerate(inputs):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}[{index}] contains NaN or infinite values")


def check_batch_sizes(inputs: Sequence[torch.Tensor], name: str = "inputs") -> int:
    """Return the shared batch size; raise ``ValueError`` when the tensors disagree."""
    if any(t.dim() == 0 for t in inputs):
        raise ValueError(f"{name} must have a batch dimension (dim 0); got a 0-d tensor")
    sizes = {int(t.shape[0]) for t in inputs}
    if len(sizes) != 1:
        raise ValueError(f"{name} must share one batch size in dim 0, got {sorted(sizes)}")
    return sizes.pop()


def check_same_device(
    inputs: Sequence[torch.Tensor], model: nn.Module | None, name: str = "inputs"
) -> None:
    """Raise ``ValueError`` when an input lives on another device than the model."""
    device = model_device(model)
    for index, tensor in enumerate(inputs):
        if device is not None and tensor.device != device:
            raise ValueError(
                f"{name}[{index}] is on {tensor.device} but the model is on {device}; "
                "move them to the same device"
            )


def model_floating_dtype(model: nn.Module | None) -> torch.dtype | None:
    """The dtype the model's input layer computes in; ``None`` when it has none.

    The weight dtype of :func:`first_conv2d`, else of the first floating parameter.
    """
    if model is None:
        return None
    conv = first_conv2d(model)
    if conv is not None:
        weight = conv.weight
        return weight.dtype if weight.is_floating_point() else None
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def first_conv2d(model: nn.Module | None) -> nn.Conv2d | None:
    """The model's first convolution (in ``modules()`` order), if it is a non-lazy ``nn.Conv2d``."""
    if model is None:
        return None
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            if isinstance(module, nn.Conv2d) and module.in_channels > 0:
                return module  # subclasses too (timm's Conv2dSame, StdConv2d)
            return None
    return None


def check_inputs_fit_model(
    inputs: Sequence[torch.Tensor], model: nn.Module | None, name: str = "inputs"
) -> None:
    """Refuse a single input tensor that the model's input layer cannot take.

    Checked: a floating dtype other than the model's (:func:`model_floating_dtype`;
    not under ``torch.autocast``), a 4-D batch whose last dim, not dim 1, holds the
    first ``nn.Conv2d``'s channels, and a 3-D ``(C, H, W)`` image with ``C > 1``.
    Nothing is checked for several inputs or without a model.

    A dtype mismatch is a ``TypeError``, a wrong layout a ``ValueError``; both name the fix.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    >>> check_inputs_fit_model((torch.rand(2, 8, 8, 3),), net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: inputs look like (B, H, W, C) images, shape (2, 8, 8, 3): ...
    """
    if model is None or len(inputs) != 1:
        return
    (tensor,) = inputs
    _check_dtype_fits(tensor, model, name)
    conv = first_conv2d(model)
    if conv is not None:
        _check_layout_fits(tensor, conv.in_channels, name)


def _check_layout_fits(tensor: torch.Tensor, channels: int, name: str) -> None:
    """The ``(B, H, W, C)`` and missing-batch checks against the first conv's channels."""
    shape = tuple(tensor.shape)
    if tensor.dim() == 4 and shape[1] != channels and shape[3] == channels:
        raise ValueError(
            f"{name} look like (B, H, W, C) images, shape {shape}: the model's first "
            f"convolution takes {channels} channels in dim 1, not {shape[1]}; use "
            f"{name}.permute(0, 3, 1, 2) (a torch.channels_last memory format is fine: "
            "it keeps the (B, C, H, W) shape)"
        )
    if tensor.dim() == 3 and channels > 1 and shape[0] == channels:
        raise ValueError(
            f"{name} look like one image (C, H, W) without a batch dimension, shape "
            f"{shape}: the model's first convolution expects (B, {channels}, H, W); use "
            f"{name}.unsqueeze(0)"
        )


_MODEL_CASTS = {
    torch.float32: "model.float()", torch.float64: "model.double()",
    torch.float16: "model.half()", torch.bfloat16: "model.bfloat16()",
}


def _check_dtype_fits(tensor: torch.Tensor, model: nn.Module, name: str) -> None:
    if not tensor.is_floating_point() or torch.is_autocast_enabled(tensor.device.type):
        return
    expected = model_floating_dtype(model)
    if expected is None or tensor.dtype == expected:
        return
    cast = _MODEL_CASTS.get(tensor.dtype, f"model.to({tensor.dtype})")
    low = ""
    if expected in (torch.float16, torch.bfloat16):
        low = (
            f" (a {expected} model needs {expected} inputs; or keep the model in float32 "
            "and run it under torch.autocast)"
        )
    raise TypeError(
        f"{name} are {tensor.dtype} but the model's parameters are {expected}; use "
        f"{name}.to({expected}), or {cast} to run the model in {tensor.dtype}{low}"
    )


def check_attribution_inputs(
    inputs: Sequence[torch.Tensor], model: nn.Module | None, name: str = "inputs"
) -> int:
    """All the checks above, the one host synchronisation (finiteness) last; returns the batch."""
    check_floating(inputs, name)
    batch = check_batch_sizes(inputs, name)
    check_same_device(inputs, model, name)
    check_inputs_fit_model(inputs, model, name)
    check_finite(inputs, name)
    return batch


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_ZERO_MAPS_MESSAGE = (
    "every map of the batch is zero: {who} cannot rank pixels and its scores say nothing "
    "about the explanation. A common cause is a model whose gradients vanish, e.g. an "
    "untrained classifier head initialised to zero (torchvision's ViT heads are): "
    "explain a trained model, or check the target and the layer"
)


def every_map_zero_warning(who: str) -> None:
    """Issue the all-zero-maps ``UserWarning`` for ``who``, pointing at the user's line."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(ALL_ZERO_MAPS_MESSAGE.format(who=who), UserWarning, stacklevel=level)


def warn_if_every_map_zero(maps: torch.Tensor, who: str) -> None:
    """Warn (``UserWarning``) when every value of ``maps`` is zero (one host synchronisation).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_every_map_zero(torch.zeros(2, 1, 4, 4), "pointing_game")
    >>> str(caught[0].message).split(":")[0]
    'every map of the batch is zero'
    """
    if maps.numel() and not bool(maps.ne(0).any()):
        every_map_zero_warning(who)


def check_class_scores(
    output: Any, *, batch: int | None = None, who: str = "the model"
) -> torch.Tensor:
    """Return ``output`` if it is a ``(batch, classes)`` tensor, else a clear error.

    ``TypeError`` for a non-tensor (naming ``who``), ``ValueError`` for another rank or
    another batch size than ``batch``.
    """
    if not isinstance(output, torch.Tensor):
        hint = ""
        if isinstance(output, (tuple, list, dict)):
            hint = ("; wrap the model so that it returns the logits alone "
                    "(e.g. lambda x: model(x)[0])")
        raise TypeError(f"{who} must return one (batch, classes) tensor of class scores, got a "
                        f"{type(output).__name__}{hint}")
    if output.dim() != 2 or (batch is not None and output.shape[0] != batch):
        rows = "" if batch is None else f" with batch = {batch} rows"
        raise ValueError(
            f"{who} must return a (batch, classes) tensor of class scores{rows}, got shape "
            f"{tuple(output.shape)}"
        )
    return output


def check_data_batch(images: torch.Tensor, index: int, who: str, *, floating: bool = True) -> None:
    """Refuse a data-loader batch of images that holds NaN or inf (or is not floating)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who}: data batch {index} images must be a tensor, got "
                        f"{type(images).__name__}")
    if not images.is_floating_point():
        if floating:
            raise TypeError(f"{who}: the images of data batch {index} must be a floating-point "
                            f"tensor (gradients need one), got {images.dtype}")
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{who}: the images of data batch {index} contain NaN or infinite values")
