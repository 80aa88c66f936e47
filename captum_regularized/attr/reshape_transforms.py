"""Ready ``reshape_transform`` functions: token activations to ``(B, C, h, w)`` maps.

Layer methods that build class activation maps need a layer output laid out as
``(batch, channels, height, width)``. Vision transformers produce tokens instead,
``(batch, tokens, channels)``. A reshape transform turns the one into the other; it is
applied identically to activations and to their gradients, so it must only select and
rearrange entries (never mix them).
"""

from __future__ import annotations

import math

import torch

__all__ = ["vit_tokens_to_map"]


def vit_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the class token and lay the patch tokens out on their square grid.

    Fits torchvision's ``VisionTransformer`` (``vit_b_16`` and friends): tokens are
    ``(B, 1 + h*w, C)``, the class token first, then the patches in row-major order.

    Parameters
    ----------
    tokens : Tensor
        Shape ``(B, N, C)`` with ``N - 1`` a perfect square.

    Returns
    -------
    Tensor
        Shape ``(B, C, h, w)`` with ``h = w = sqrt(N - 1)``.

    Raises
    ------
    ValueError
        When ``tokens`` is not 3-D or ``N - 1`` is not a perfect square.

    Examples
    --------
    >>> tokens = torch.randn(2, 1 + 4 * 4, 8)
    >>> vit_tokens_to_map(tokens).shape
    torch.Size([2, 8, 4, 4])
    >>> bool((vit_tokens_to_map(tokens)[:, :, 0, 1] == tokens[:, 2]).all())
    True
    """
    if tokens.dim() != 3:
        raise ValueError(
            "vit_tokens_to_map expects token activations of shape (batch, tokens, channels), "
            f"got shape {tuple(tokens.shape)}"
        )
    batch, count, channels = tokens.shape
    side = math.isqrt(max(count - 1, 0))
    if count < 2 or side * side != count - 1:
        raise ValueError(
            "vit_tokens_to_map expects one class token followed by a square grid of patch "
            f"tokens, but {count} - 1 = {count - 1} tokens is not a perfect square"
        )
    return tokens[:, 1:, :].reshape(batch, side, side, channels).permute(0, 3, 1, 2)
