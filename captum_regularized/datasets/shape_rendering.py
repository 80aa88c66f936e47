"""Rasterising shape objects: inside-tests at pixel centres, in a square window per object.

Objects are as in :class:`ShapesLayout`; pixel ``(row, col)`` is covered when its centre
``(col + 0.5, row + 0.5)`` is inside the shape.
"""

from __future__ import annotations

import math

import torch

from captum_regularized.datasets.shapes import inside_shape


def window_size(max_radius: float, image_size: int) -> int:
    """Side of a square pixel window that holds every object of radius ``<= max_radius``."""
    return min(image_size, math.ceil(2.0 * max_radius) + 3)


def object_windows(
    kinds: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, turns: torch.Tensor,
    image_size: int, window: int, per_image: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside-tests of objects ``(N,)`` on their own ``window x window`` patch.

    Returns ``inside`` bool ``(N, W, W)`` and ``index`` int64 ``(N, W, W)``: the flat index
    of each patch pixel in a stack of images holding ``per_image`` consecutive objects each.

    Examples
    --------
    >>> inside, index = object_windows(torch.tensor([0]), torch.tensor([[10.0, 6.0]]),
    ...                                torch.tensor([2.0]), torch.tensor([0.0]), 16, 7)
    >>> int(inside.sum()), divmod(int(index[0, 0, 0]), 16)  # the patch's first row, column
    (12, (3, 7))
    """
    if not 1 <= window <= image_size:
        raise ValueError(f"window must be in [1, image_size={image_size}], got {window}")
    turn2 = turns * turns
    denominator = (turn2 + 1.0) * radii  # cos and sin of the angle, divided by the radius
    cos_r = ((1.0 - turn2) / denominator)[:, None, None]
    sin_r = ((turns * 2.0) / denominator)[:, None, None]
    origin = (centers.floor().long() - window // 2).clamp(0, image_size - window)
    offsets = torch.arange(window, device=centers.device)
    cols, rows = origin[:, 0, None] + offsets, origin[:, 1, None] + offsets  # (N, W)
    dx = (cols.to(torch.float32) + 0.5 - centers[:, 0, None])[:, None, :]  # from pixel centres
    dy = (rows.to(torch.float32) + 0.5 - centers[:, 1, None])[:, :, None]
    u = dx * cos_r + dy * sin_r
    v = dx * sin_r - dy * cos_r  # "up" is towards row 0
    image = torch.arange(len(kinds), device=centers.device) // per_image
    index = image[:, None, None] * image_size**2 + rows[:, :, None] * image_size + cols[:, None, :]
    return inside_shape(kinds, u, v), index


def render_object_masks(
    kinds: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, turns: torch.Tensor,
    image_size: int,
) -> torch.Tensor:
    """Bool masks ``(N, image_size, image_size)`` of the pixels each object covers.

    Examples
    --------
    >>> mask = render_object_masks(torch.tensor([1]), torch.tensor([[4.0, 4.0]]),
    ...                            torch.tensor([2.0]), torch.tensor([0.0]), image_size=8)
    >>> mask[0].nonzero().tolist()  # a square of half-side 0.7 * 2 = 1.4 pixels at (4, 4)
    [[3, 3], [3, 4], [4, 3], [4, 4]]
    """
    count = len(kinds)
    max_radius = float(radii.max()) if count else 0.0
    window = window_size(max_radius, image_size)
    inside, index = object_windows(kinds, centers, radii, turns, image_size, window)
    masks = torch.zeros(count * image_size**2, dtype=torch.bool, device=centers.device)
    masks[index.reshape(-1)] = inside.reshape(-1)
    return masks.view(count, image_size, image_size)
