"""The shape vocabulary of :class:`SyntheticShapes`: analytic inside-tests on local coordinates.

Every shape is a predicate on ``(u, v)`` (``u`` right, ``v`` up, in units of the object's
radius) that fits inside the unit disk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SQRT3 = 1.7320508075688772


def _plus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m <= 0.7) & (m >= 0.35)


def _half_disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = v + 0.4  # flat side down, shifted so the bounding circle stays the unit circle
    return (w >= 0.0) & (u * u + w * w <= 0.81)


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au = u.abs() * _SQRT3  # hexagram: an up and a down triangle
    return ((v >= -0.5) & (au + v <= 1.0)) | ((v <= 0.5) & (au - v <= 1.0))


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    a, b = (u + v).abs(), (u - v).abs()  # the plus turned by 45 degrees
    return ((a <= 0.42) & (b <= 1.34)) | ((b <= 0.42) & (a <= 1.34))


_SHAPES: tuple[tuple[str, Predicate], ...] = (
    ("disk", lambda u, v: u * u + v * v <= 1.0),
    ("square", lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.7),
    # equilateral, pointing up, inscribed in the unit circle
    ("triangle", lambda u, v: (v >= -0.5) & (u.abs() * _SQRT3 + v <= 1.0)),
    ("plus", _plus),
    ("ring", _ring),
    ("bar", lambda u, v: (u.abs() <= 0.95) & (v.abs() <= 0.3)),
    ("half_disk", _half_disk),
    ("star", _star),
    ("frame", _frame),
    ("diamond", lambda u, v: u.abs() + v.abs() <= 1.0),
    ("cross", _cross),
    # two triangles meeting at their tips: a bow tie standing upright
    ("hourglass", lambda u, v: (u.abs() <= v.abs() * 0.8) & (v.abs() <= 0.78)),
)

SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in _SHAPES)
"""Names of the shapes, in class-index order (``num_classes=k`` uses the first ``k``)."""


def inside_shape(kinds: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Which points ``(u, v)`` of shape ``(N, ...)`` lie inside the shape ``kinds`` ``(N,)``
    of their object.
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
