"""Ready ``reshape_transform`` functions: token activations to ``(B, C, h, w)`` maps.

Layer methods that build class activation maps need a layer output laid out as
``(batch, channels, height, width)``. Vision transformers produce tokens instead. A
reshape transform turns the one into the other; it is applied identically to
activations and to their gradients, so it must only select and rearrange entries
(never mix them). The layouts:

* :func:`vit_tokens_to_map`: ``(B, P + h*w, C)``, ``P`` prefix tokens first (the class
  token of torchvision's and timm's ``vit_*`` and of Hugging Face's ViT, ``P = 1``; timm
  models with register tokens have ``P = model.num_prefix_tokens``), then the patches
  in row-major order; ``grid=(h, w)`` for a non-square grid, ``prefix_tokens=0`` for
  token layers without a class token.
* :func:`deit_tokens_to_map`: distilled DeiT, ``(B, 2 + h*w, C)`` (class and
  distillation tokens first).
* :func:`swin_tokens_to_map`: a Swin stage's ``(B, H, W, C)`` output (timm's
  ``SwinTransformerStage``), moved to ``(B, C, H, W)``.

Pass them as ``reshape_transform=``; ``functools.partial(vit_tokens_to_map,
prefix_tokens=5)`` fixes the keyword arguments.
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
    """Drop the prefix tokens and lay the patch tokens out on their grid.

    Fits torchvision's ``VisionTransformer`` (``vit_b_16`` and friends), timm's
    ``vit_*`` and Hugging Face's ``ViTModel`` layers: tokens are ``(B, P + h*w, C)``,
    the ``P`` prefix tokens (the class token; register tokens after it in timm) first,
    then the patches in row-major order.

    Parameters
    ----------
    tokens : Tensor
        Shape ``(B, N, C)``.
    prefix_tokens : int
        ``P``, the tokens before the patches (keyword only): 1 for a class token (the
        default), ``model.num_prefix_tokens`` for timm models, 0 for none.
    grid : (int, int), optional
        ``(h, w)`` of the patch grid (keyword only); by default the grid is square,
        ``h = w = sqrt(N - P)``.

    Returns
    -------
    Tensor
        Shape ``(B, C, h, w)``; ``out[b, c, i, j] = tokens[b, P + i * w + j, c]``.

    Raises
    ------
    ValueError
        When ``tokens`` is not 3-D, ``prefix_tokens`` is not an int in ``[0, N)``, or
        the patch tokens do not fill the grid (``N - P`` not a perfect square without
        ``grid``, or not ``h * w``).

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
    """Distilled DeiT tokens ``(B, 2 + h*w, C)`` to ``(B, C, h, w)``.

    timm's ``deit_*_distilled_*`` models put a class token and a distillation token
    before the patches; both are dropped. The same as
    ``vit_tokens_to_map(tokens, prefix_tokens=2, grid=grid)``.

    Parameters
    ----------
    tokens : Tensor
        Shape ``(B, 2 + h*w, C)``.
    grid : (int, int), optional
        ``(h, w)`` of the patch grid; square by default.

    Returns
    -------
    Tensor
        Shape ``(B, C, h, w)``.

    Raises
    ------
    ValueError
        As :func:`vit_tokens_to_map`.

    Examples
    --------
    >>> tokens = torch.randn(2, 2 + 3 * 3, 4)
    >>> maps = deit_tokens_to_map(tokens)
    >>> maps.shape, bool((maps[:, :, 0, 0] == tokens[:, 2]).all())
    (torch.Size([2, 4, 3, 3]), True)
    """
    return vit_tokens_to_map(tokens, prefix_tokens=2, grid=grid)


def swin_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """A Swin stage's channels-last output ``(B, H, W, C)`` to ``(B, C, H, W)``.

    timm's Swin Transformer (``swin_*``; its ``model.layers[i]`` stages and their
    blocks) keeps activations channels-last; this only moves the channel dim. For
    Hugging Face's Swin, whose layers return ``(B, H*W, C)`` tokens without a class
    token, use ``vit_tokens_to_map(tokens, prefix_tokens=0)``.

    Parameters
    ----------
    tokens : Tensor
        Shape ``(B, H, W, C)``.

    Returns
    -------
    Tensor
        Shape ``(B, C, H, W)``, a view of ``tokens``.

    Raises
    ------
    ValueError
        When ``tokens`` is not 4-D.

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
