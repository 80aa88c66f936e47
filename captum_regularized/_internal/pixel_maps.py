"""Bring an attribution map of any usual shape to one value per pixel of the input.

Metrics, the Quantus adapter and the figures receive maps in every form attribution
methods produce: input-shaped ``(B, C, H, W)`` (saliency), one channel ``(B, 1, h, w)``
or ``(B, h, w)`` at a lower resolution (Grad-CAM), or one map ``(h, w)`` for the whole
batch. :func:`per_pixel_map` makes them all a per-pixel map ``(B, 1, H, W)``: channels
are collapsed with :func:`collapse_channels` (the body of the public
:func:`~captum_regularized.attr.reduce_channels`), a batch of one is repeated and a
different resolution is resized bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CHANNEL_REDUCTIONS", "collapse_channels", "per_pixel_map"]

CHANNEL_REDUCTIONS = ("max", "sum", "mean")
"""The channel reductions: max of ``|.|``, sum and mean of the signed values."""


def collapse_channels(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce dim 1 of ``maps`` with ``mode``, one of :data:`CHANNEL_REDUCTIONS`.

    The caller checks ``mode`` and that ``maps`` has a channel dimension.

    Examples
    --------
    >>> collapse_channels(torch.tensor([[[1.0], [-3.0]]]), "max").tolist()
    [[[3.0]]]
    """
    if mode == "max":
        return maps.abs().amax(dim=1, keepdim=True)
    if mode == "sum":
        return maps.sum(dim=1, keepdim=True)
    return maps.mean(dim=1, keepdim=True)


def per_pixel_map(
    attributions: torch.Tensor,
    batch: int,
    size: tuple[int, int],
    *,
    channel_reduction: str = "max",
    device: torch.device | None = None,
    name: str = "attributions",
) -> torch.Tensor:
    """One float value per pixel, shape ``(batch, 1, *size)``, on the map's device.

    Parameters
    ----------
    attributions : Tensor
        ``(B, C, h, w)``, ``(B, 1, h, w)``, ``(B, h, w)`` or ``(h, w)``; ``B`` is
        ``batch`` or 1 (repeated).
    batch : int
        Number of examples.
    size : (int, int)
        Target ``(H, W)``; other resolutions are resized bilinearly.
    channel_reduction : {"max", "sum", "mean"}
        How :func:`~captum_regularized.attr.reduce_channels` collapses ``C > 1``
        channels (``"max"`` is the maximum absolute value over channels).
    device : torch.device, optional
        The inputs' device; a map elsewhere is an error.
    name : str
        Argument name used in error messages.

    Returns
    -------
    Tensor
        ``(batch, 1, *size)``, detached; float32 unless the map is float64.

    Raises
    ------
    TypeError
        When ``attributions`` is not a tensor.
    ValueError
        For a shape that fits none of the forms, an unknown ``channel_reduction``,
        another device than ``device``, or NaN/infinite values.

    Examples
    --------
    >>> per_pixel_map(torch.ones(2, 3, 4, 4), 2, (4, 4)).shape
    torch.Size([2, 1, 4, 4])
    >>> per_pixel_map(torch.ones(1, 2, 2), 3, (8, 8)).shape
    torch.Size([3, 1, 8, 8])
    """
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
    if not maps.is_floating_point() or maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.float()
    if maps.shape[1] > 1:
        maps = collapse_channels(maps, channel_reduction)
    if maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if tuple(maps.shape[2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps.expand(batch, 1, *size)
