"""Bring an attribution map of any usual shape to one value per pixel of the input.

:func:`per_pixel_map` makes ``(B, C, H, W)``, ``(B, 1, h, w)``, ``(B, h, w)`` and
``(h, w)`` maps a ``(B, 1, H, W)`` map: channels collapsed (:func:`collapse_channels`,
the body of :func:`~captum_regularized.attr.reduce_channels`), a batch of one
repeated, another resolution resized bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CHANNEL_REDUCTIONS", "collapse_channels", "per_pixel_map"]

CHANNEL_REDUCTIONS = ("max", "sum", "mean")
"""The channel reductions: max of ``|.|``, sum and mean of the signed values."""


def collapse_channels(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce dim 1 of ``maps`` with ``mode`` (checked by the caller)."""
    if mode == "max":
        return maps.abs().amax(dim=1, keepdim=True)
    if mode == "sum":
        return maps.sum(dim=1, keepdim=True)
    return maps.mean(dim=1, keepdim=True)


def per_pixel_map(
    attributions: torch.Tensor, batch: int, size: tuple[int, int], *,
    channel_reduction: str = "max", device: torch.device | None = None, name: str = "attributions",
) -> torch.Tensor:
    """One float value per pixel, shape ``(batch, 1, *size)``, detached, on the map's device.

    ``attributions`` is ``(B, C, h, w)``, ``(B, h, w)`` or ``(h, w)`` with ``B`` equal to
    ``batch`` or 1; ``C > 1`` channels are collapsed with ``channel_reduction``, another
    ``(h, w)`` than ``size`` resized bilinearly; the result is float32 unless the map is
    float64. A non-tensor is a ``TypeError``; another shape, an unknown reduction, another
    device than ``device`` or non-finite values are a ``ValueError`` naming ``name``.

    Examples
    --------
    >>> per_pixel_map(torch.ones(1, 2, 2), 3, (8, 8)).shape
    torch.Size([3, 1, 8, 8])
    """
    _check_arguments(attributions, channel_reduction, device, name)
    maps = _four_dim(attributions, batch, name)
    if not maps.is_floating_point() or maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.float()
    if maps.shape[1] > 1:
        maps = collapse_channels(maps, channel_reduction)
    if maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if tuple(maps.shape[2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps.expand(batch, 1, *size)


def _check_arguments(
    attributions: object, channel_reduction: str, device: torch.device | None, name: str
) -> None:
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(
            f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}"
        )
    if device is not None and attributions.device != device:
        raise ValueError(
            f"{name} is on {attributions.device} but the inputs are on {device}; "
            "move them to the same device"
        )


def _four_dim(attributions: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """The detached map as ``(1 or batch, C, h, w)``, with a non-empty spatial shape."""
    maps = attributions.detach()
    if maps.dim() == 2:
        maps = maps[None, None]
    elif maps.dim() == 3:
        maps = maps[:, None]
    elif maps.dim() != 4:
        raise ValueError(
            f"{name} must have shape (B, C, h, w), (B, h, w) or (h, w); "
            f"got shape {tuple(attributions.shape)}"
        )
    if maps.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must hold one map per example ({batch}) or one map for all; "
            f"got batch size {maps.shape[0]}"
        )
    if min(maps.shape[2:]) == 0:
        raise ValueError(f"{name} has an empty spatial shape {tuple(maps.shape[2:])}")
    return maps
