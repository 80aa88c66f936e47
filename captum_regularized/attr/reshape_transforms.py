"""Ready ``reshape_transform`` functions: token activations to ``(B, C, h, w)`` maps.

Layer methods need a layer output laid out as ``(batch, channels, height, width)``;
vision transformers produce tokens instead. A reshape transform is applied identically
to activations and to their gradients, so it only selects and rearranges entries. Pass
one as ``reshape_transform=``; the layouts of torchvision, timm and Hugging Face models
are in :doc:`/design_notes/attribution_maps`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["deit_tokens_to_map", "swin_tokens_to_map", "vit_tokens_to_map"]


def _grid_of(patches: int, grid: tuple[int, int] | None, who: str, prefix: int) -> tuple[int, int]:
    """The ``(h, w)`` grid of ``patches`` tokens: ``grid`` checked, or the square one."""
    if grid is not None:
        if (
            not isinstance(grid, (tuple, list))
            or len(grid) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid)
        ):
            raise ValueError(f"grid must be a pair of positive ints (h, w), got {grid!r}")
        height, width = int(grid[0]), int(grid[1])
        if height * width != patches:
            raise ValueError(
                f"{who}: grid={height, width} needs {height * width} patch tokens after the "
                f"{prefix} prefix token(s), got {patches}"
            )
        return height, width
    side = math.isqrt(max(patches, 0))
    if patches < 1 or side * side != patches:
        raise ValueError(
            f"{who} expects {prefix} prefix token(s) followed by a square grid of patch "
            f"tokens, but {patches} patch tokens is not a perfect square; pass "
            "grid=(h, w) for a non-square grid"
        )
    return side, side


def vit_tokens_to_map(
    tokens: torch.Tensor, *, prefix_tokens: int = 1, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Drop the ``P`` prefix tokens and lay the patch tokens out on their grid.

    For torchvision's, timm's and Hugging Face's ViT layers: ``(B, P + h*w, C)``, the
    prefix tokens (class token, then any register tokens) first, then the patches in
    row-major order.

    Parameters
    ----------
    tokens : Tensor
        Shape ``(B, N, C)``.
    prefix_tokens : int
        ``P`` (keyword only): 1 for a class token (default), ``model.num_prefix_tokens``
        for timm models, 0 for none.
    grid : (int, int), optional
        ``(h, w)`` of the patch grid (keyword only); square by default.

    Returns
    -------
    Tensor
        Shape ``(B, C, h, w)``; ``out[b, c, i, j] = tokens[b, P + i * w + j, c]``.

    Raises
    ------
    ValueError
        When ``tokens`` is not 3-D, ``prefix_tokens`` is not an int in ``[0, N)``, or
        the patch tokens do not fill the grid.

    Examples
    --------
    >>> tokens = torch.randn(2, 1 + 4 * 4, 8)
    >>> vit_tokens_to_map(tokens).shape
    torch.Size([2, 8, 4, 4])
    >>> bool((vit_tokens_to_map(tokens)[:, :, 0, 1] == tokens[:, 2]).all())
    True
    >>> registers = torch.randn(2, 5 + 2 * 3, 8)  # class + 4 register tokens, 2 x 3 patches
    >>> vit_tokens_to_map(registers, prefix_tokens=5, grid=(2, 3)).shape
    torch.Size([2, 8, 2, 3])
    """
    who = "vit_tokens_to_map"
    if tokens.dim() != 3:
        raise ValueError(
            f"{who} expects token activations of shape (batch, tokens, channels), "
            f"got shape {tuple(tokens.shape)}"
        )
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise ValueError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
    batch, count, channels = tokens.shape
    if prefix_tokens >= count:
        raise ValueError(
            f"{who}: {count} tokens leave no patch token after {prefix_tokens} prefix token(s)"
        )
    height, width = _grid_of(count - prefix_tokens, grid, who, prefix_tokens)
    patches = tokens[:, prefix_tokens:, :]
    return patches.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def deit_tokens_to_map(
    tokens: torch.Tensor, *, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Distilled DeiT tokens ``(B, 2 + h*w, C)`` (class and distillation token first) to maps.

    ``vit_tokens_to_map(tokens, prefix_tokens=2, grid=grid)``, for timm's
    ``deit_*_distilled_*`` models; returns ``(B, C, h, w)`` and raises as it does.

    Examples
    --------
    >>> tokens = torch.randn(2, 2 + 3 * 3, 4)
    >>> maps = deit_tokens_to_map(tokens)
    >>> maps.shape, bool((maps[:, :, 0, 0] == tokens[:, 2]).all())
    (torch.Size([2, 4, 3, 3]), True)
    """
    return vit_tokens_to_map(tokens, prefix_tokens=2, grid=grid)


def swin_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """A Swin stage's channels-last output ``(B, H, W, C)`` to a ``(B, C, H, W)`` view.

    For timm's Swin Transformer stages; raises ``ValueError`` unless ``tokens`` is 4-D.
    Hugging Face's Swin layers need ``vit_tokens_to_map(tokens, prefix_tokens=0)``.

    Examples
    --------
    >>> stage = torch.randn(2, 4, 4, 16)
    >>> maps = swin_tokens_to_map(stage)
    >>> maps.shape, bool((maps[:, :, 1, 2] == stage[:, 1, 2]).all())
    (torch.Size([2, 16, 4, 4]), True)
    """
    if tokens.dim() != 4:
        raise ValueError(
            "swin_tokens_to_map expects a Swin stage's activation of shape "
            f"(batch, height, width, channels), got shape {tuple(tokens.shape)}"
        )
    return tokens.permute(0, 3, 1, 2)
