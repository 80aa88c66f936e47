"""Rasterising shape objects: inside-tests at pixel centres, in a square window per object.

An object is a shape kind, a centre ``(x, y)`` and a radius in pixels, and a rotation
``turn = tan(angle / 2)`` (``cos`` and ``sin`` from products and one division). Pixel
``(row, col)`` is covered when its centre ``(col + 0.5, row + 0.5)`` is inside the shape.
"""

from __future__ import annotations

import math

import torch

from captum_regularized.datasets.shapes import inside_shape


def window_size(max_radius: float, image_size: int) -> int:
    """Side of a square pixel window that holds every object of radius ``<= max_radius``."""
    return min(image_size, math.ceil(2.0 * max_radius) + 3)


def object_windows(
    kinds: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    turns: torch.Tensor,
    image_size: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inside-tests of objects ``(N,)`` on their own ``window x window`` patch.

    Returns ``inside`` bool ``(N, window, window)`` and the patch origins ``rows``,
    ``cols`` (int64 ``(N,)``): ``inside[n, i, j]`` is pixel ``(rows[n] + i, cols[n] + j)``.

    Examples
    --------
    >>> inside, rows, cols = object_windows(torch.tensor([0]), torch.tensor([[10.0, 6.0]]),
    ...                                     torch.tensor([2.0]), torch.tensor([0.0]), 16, 7)
    >>> int(inside.sum()), rows.tolist(), cols.tolist()
    (12, [3], [7])
    """
    if not 1 <= window <= image_size:
        raise ValueError(f"window must be in [1, image_size={image_size}], got {window}")
    turn2 = turns * turns
    denominator = (turn2 + 1.0) * radii  # cos and sin of the angle, divided by the radius
    cos_r = ((1.0 - turn2) / denominator)[:, None, None]
    sin_r = ((turns * 2.0) / denominator)[:, None, None]
    origin = centers.floor().long() - window // 2
    origin = origin.clamp(0, image_size - window)
    offsets = torch.arange(window, device=centers.device)
    cols = (origin[:, 0, None] + offsets).to(torch.float32) + 0.5  # pixel centres (N, W)
    rows = (origin[:, 1, None] + offsets).to(torch.float32) + 0.5
    dx = (cols - centers[:, 0, None])[:, None, :]  # (N, 1, W)
    dy = (rows - centers[:, 1, None])[:, :, None]  # (N, W, 1)
    u = dx * cos_r + dy * sin_r
    v = dx * sin_r - dy * cos_r  # "up" is towards row 0
    return inside_shape(kinds, u, v), origin[:, 1], origin[:, 0]


def window_pixel_indices(
    rows: torch.Tensor, cols: torch.Tensor, image_size: int, window: int
) -> torch.Tensor:
    """Flat pixel index ``row * image_size + col`` of every window cell: ``(N, W, W)``."""
    offsets = torch.arange(window, device=rows.device)
    row_index = (rows[:, None] + offsets)[:, :, None] * image_size
    return row_index + (cols[:, None] + offsets)[:, None, :]


def render_object_masks(
    kinds: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    turns: torch.Tensor,
    image_size: int,
) -> torch.Tensor:
    """Bool masks ``(N, image_size, image_size)`` of the pixels each object covers.

    Examples
    --------
    >>> mask = render_object_masks(torch.tensor([1]), torch.tensor([[4.0, 4.0]]),
    ...                            torch.tensor([2.0]), torch.tensor([0.0]), image_size=8)
    >>> mask[0].int()  # a square of half-side 0.7 * 2 = 1.4 pixels around (4, 4)
    tensor([[0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    count = len(kinds)
    max_radius = float(radii.max()) if count else 0.0
    window = window_size(max_radius, image_size)
    inside, rows, cols = object_windows(kinds, centers, radii, turns, image_size, window)
    flat = window_pixel_indices(rows, cols, image_size, window)
    flat = flat + (torch.arange(count, device=flat.device) * image_size**2)[:, None, None]
    masks = torch.zeros(count * image_size**2, dtype=torch.bool, device=centers.device)
    masks[flat.reshape(-1)] = inside.reshape(-1)
    return masks.view(count, image_size, image_size)
