"""Rasterising shape objects: inside-tests at pixel centres, evaluated in a window per object.

An object is a shape kind (see :mod:`~captum_regularized.datasets.shapes`), a centre
``(x, y)`` in pixels, a radius in pixels and a rotation given as ``turn = tan(angle / 2)``
(so ``cos`` and ``sin`` come from products and one division, never from a library
``sin``). Pixel ``(row, col)`` has its centre at ``x = col + 0.5``, ``y = row + 0.5``
and belongs to the object when its centre passes the shape's inside-test. Only a square
window around each object is evaluated, which makes rendering cost independent of how
much of the image the object leaves empty.
"""

from __future__ import annotations

import math

import torch

from captum_regularized.datasets.shapes import inside_shape


def window_size(max_radius: float, image_size: int) -> int:
    """Side of a square pixel window that holds every object of radius ``<= max_radius``.

    Examples
    --------
    >>> window_size(5.2, 32)
    14
    >>> window_size(40.0, 32)
    32
    """
    return min(image_size, math.ceil(2.0 * max_radius) + 3)


def object_windows(
    kinds: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    turns: torch.Tensor,
    image_size: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inside-tests of each object on its own ``window x window`` patch of the image.

    Parameters
    ----------
    kinds : torch.Tensor
        ``(N,)`` shape indices.
    centers : torch.Tensor
        ``(N, 2)`` centres ``(x, y)`` in pixels.
    radii, turns : torch.Tensor
        ``(N,)`` radii in pixels and rotations as ``tan(angle / 2)``.
    image_size : int
        Side of the square image.
    window : int
        Patch side, from :func:`window_size` for the largest radius.

    Returns
    -------
    tuple of torch.Tensor
        ``inside`` bool ``(N, window, window)`` and the patch origins ``rows``, ``cols``
        (int64 ``(N,)``), so ``inside[n, i, j]`` is pixel ``(rows[n] + i, cols[n] + j)``.

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
    """Flat pixel index ``row * image_size + col`` of every window cell: ``(N, W, W)``.

    Examples
    --------
    >>> window_pixel_indices(torch.tensor([1]), torch.tensor([2]), 4, 2).tolist()
    [[[6, 7], [10, 11]]]
    """
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
    """Full-size masks of the pixels each object covers (pixel centres inside the shape).

    Parameters
    ----------
    kinds, centers, radii, turns : torch.Tensor
        As in :func:`object_windows`.
    image_size : int
        Side of the square pixel grid.

    Returns
    -------
    torch.Tensor
        Bool ``(N, image_size, image_size)``.

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
