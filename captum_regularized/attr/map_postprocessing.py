"""Turn input-shaped attributions into per-pixel maps, as saliency papers display them.

The signed-saliency paper (Llorente et al., arXiv 2309.12913) shows
``M_ij = max_k |X_kij|`` (the maximum over channels of the absolute value) and
min-max normalises every image. These two steps are kept apart from the attribution
classes, whose outputs keep the input's shape so Captum's tools take them unchanged.
"""

from __future__ import annotations

import torch

from captum_regularized._internal.pixel_maps import CHANNEL_REDUCTIONS, collapse_channels

__all__ = ["CHANNEL_REDUCTIONS", "normalize_per_example", "reduce_channels"]


def reduce_channels(attributions: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Collapse the channel dimension (dim 1): ``(B, C, H, W) -> (B, 1, H, W)``.

    Parameters
    ----------
    attributions : Tensor
        Shape ``(B, C, ...)``; any number of trailing (spatial) dims.
    mode : {"max", "sum", "mean"}
        ``"max"``: maximum over channels of the absolute value (the paper's map, always
        ``>= 0``). ``"sum"`` / ``"mean"``: sum / mean of the signed values, as Captum's
        visualisation does.

    Returns
    -------
    Tensor
        Shape ``(B, 1, ...)``, same dtype and device. A plain reduction: a NaN or an
        infinity in a pixel's channels stays visible in that pixel (it is never hidden
        or spread to other pixels).

    Raises
    ------
    ValueError
        For an unknown ``mode`` or a tensor without a channel dimension.

    Examples
    --------
    >>> a = torch.tensor([[[[1.0, -3.0]], [[-2.0, 2.0]]]])  # (1, 2, 1, 2)
    >>> reduce_channels(a).tolist()
    [[[[2.0, 3.0]]]]
    >>> reduce_channels(a, "sum").tolist()
    [[[[-1.0, -1.0]]]]
    """
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(
            f"attributions must be a torch.Tensor, got {type(attributions).__name__}"
        )
    if mode not in CHANNEL_REDUCTIONS:
        raise ValueError(f"mode must be one of {CHANNEL_REDUCTIONS}, got {mode!r}")
    if attributions.dim() < 2:
        raise ValueError(
            "attributions must have shape (batch, channels, ...), "
            f"got shape {tuple(attributions.shape)}"
        )
    return collapse_channels(attributions, mode)


def normalize_per_example(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise every example (dim 0) to ``[0, 1]``; a constant map becomes 0.

    Parameters
    ----------
    maps : Tensor
        Shape ``(B, ...)``, floating point.

    Returns
    -------
    Tensor
        Same shape; per example ``(m - min) / (max - min)``, never NaN.

    Raises
    ------
    TypeError
        Unless ``maps`` is a floating-point tensor.
    ValueError
        For a tensor without a non-empty batch dimension, or one holding NaN or
        infinite values (there is no meaningful min-max scaling of those; one check
        for the whole batch).

    Examples
    --------
    >>> normalize_per_example(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])).tolist()
    [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    >>> normalize_per_example(torch.tensor([[1.0, float("inf")]]))
    Traceback (most recent call last):
    ...
    ValueError: maps contains NaN or infinite values; normalize finite maps only
    """
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point():
        raise TypeError("maps must be a floating-point torch.Tensor")
    if maps.dim() < 1 or maps.shape[0] == 0:
        raise ValueError(f"maps must have a non-empty batch dimension, got {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contains NaN or infinite values; normalize finite maps only")
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    scaled = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return scaled.reshape(maps.shape)
