"""Turn input-shaped attributions into per-pixel maps, as saliency papers display them.

The signed-saliency paper shows ``M_ij = max_k |X_kij|`` and min-max normalises every
image. The attribution classes keep the input's shape (for Captum's tools); these two
steps are separate.
"""

from __future__ import annotations

import torch

from captum_regularized._internal.pixel_maps import CHANNEL_REDUCTIONS, collapse_channels

__all__ = ["CHANNEL_REDUCTIONS", "normalize_per_example", "reduce_channels"]


def reduce_channels(attributions: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Collapse the channel dimension (dim 1): ``(B, C, ...) -> (B, 1, ...)``.

    Parameters
    ----------
    attributions : Tensor
        Shape ``(B, C, ...)``.
    mode : {"max", "sum", "mean"}
        ``"max"``: maximum over channels of the absolute value (the paper's map).
        ``"sum"`` / ``"mean"``: of the signed values, as Captum's visualisation does.

    Returns
    -------
    Tensor
        Shape ``(B, 1, ...)``, same dtype and device; a NaN or infinity stays in its pixel.

    Raises
    ------
    TypeError
        For a non-tensor.
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
        For an empty batch, or NaN or infinite values (one check for the whole batch).

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
