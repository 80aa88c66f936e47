"""The shape vocabulary of :class:`SyntheticShapes`: analytic inside-tests on local coordinates.

Every shape is a predicate on local coordinates ``(u, v)`` (``u`` to the right, ``v``
up, both in units of the object's radius) and fits inside the unit disk, so an object
of radius ``r`` centred at least ``r`` away from every border lies wholly inside the
image. Only comparisons, products and sums are used, so the pixels a shape covers are
bit-identical on every machine.

The shapes were chosen to stay distinguishable at 32x32 pixels with up to 15 degrees of
rotation (a square is never mistaken for a diamond, a plus never for an x).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SQRT3 = 1.7320508075688772


def _disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v <= 1.0


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.7


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # equilateral, pointing up, inscribed in the unit circle
    return (v >= -0.5) & (u.abs() * _SQRT3 + v <= 1.0)


def _diamond(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.abs() + v.abs() <= 1.0


def _plus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m <= 0.7) & (m >= 0.35)


def _bar(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.abs() <= 0.95) & (v.abs() <= 0.3)


def _half_disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # flat side down; shifted so the bounding circle stays the unit circle
    w = v + 0.4
    return (w >= 0.0) & (u * u + w * w <= 0.81)


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # hexagram: an up and a down triangle
    au = u.abs() * _SQRT3
    return ((v >= -0.5) & (au + v <= 1.0)) | ((v <= 0.5) & (au - v <= 1.0))


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # an x: the plus turned by 45 degrees (|u +- v| / sqrt(2) are the arm coordinates)
    a, b = (u + v).abs(), (u - v).abs()
    return ((a <= 0.42) & (b <= 1.34)) | ((b <= 0.42) & (a <= 1.34))


def _hourglass(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # two triangles meeting at their tips: a bow tie standing upright
    return (u.abs() <= v.abs() * 0.8) & (v.abs() <= 0.78)


_SHAPES: tuple[tuple[str, Predicate], ...] = (
    ("disk", _disk),
    ("square", _square),
    ("triangle", _triangle),
    ("plus", _plus),
    ("ring", _ring),
    ("bar", _bar),
    ("half_disk", _half_disk),
    ("star", _star),
    ("frame", _frame),
    ("diamond", _diamond),
    ("cross", _cross),
    ("hourglass", _hourglass),
)

SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in _SHAPES)
"""Names of the shapes, in class-index order (``num_classes=k`` uses the first ``k``)."""


def inside_shape(kinds: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Which points lie inside the shape of their object.

    Parameters
    ----------
    kinds : torch.Tensor
        Integer shape index per object, shape ``(N,)``, values in ``[0, len(SHAPE_NAMES))``.
    u, v : torch.Tensor
        Local coordinates, shape ``(N, ...)`` (one row of points per object).

    Returns
    -------
    torch.Tensor
        Bool tensor shaped like ``u``. Each object's points are tested against its own
        shape only (objects are grouped by kind, so the cost does not grow with the
        number of shapes).

    Examples
    --------
    >>> u = torch.tensor([[0.0, 0.9], [0.0, 0.9]])
    >>> v = torch.tensor([[0.0, 0.9], [0.0, 0.9]])
    >>> inside_shape(torch.tensor([0, 1]), u, v).tolist()  # disk, square
    [[True, False], [True, False]]
    """
    if kinds.dim() != 1 or u.shape != v.shape or u.shape[0] != kinds.shape[0]:
        raise ValueError(
            "kinds must have shape (N,) and u, v one shared shape (N, ...), got "
            f"{tuple(kinds.shape)}, {tuple(u.shape)}, {tuple(v.shape)}"
        )
    out = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    for kind in torch.unique(kinds).tolist():
        if not 0 <= kind < len(_SHAPES):
            raise ValueError(f"kinds must lie in [0, {len(_SHAPES)}), got {kind}")
        rows = (kinds == kind).nonzero().squeeze(1)
        out[rows] = _SHAPES[kind][1](u[rows], v[rows])
    return out
