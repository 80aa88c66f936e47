"""The shape vocabulary of :class:`SyntheticShapes`: analytic inside-tests on local coordinates.

Every shape is a predicate on ``(u, v)`` (``u`` right, ``v`` up, in units of the object's
radius) that fits inside the unit disk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Equilateral, pointing up, inscribed in the unit circle."""
    return (v >= -0.5) & (u.abs() * 3**0.5 + v <= 1.0)


def _two_bars(a: torch.Tensor, b: torch.Tensor, width: float, length: float) -> torch.Tensor:
    """Two crossed bars (half-width ``width``, half-length ``length``) on axes ``a, b >= 0``."""
    return ((a <= width) & (b <= length)) | ((b <= width) & (a <= length))


def _band(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (x <= high) & (x >= low)


def _half_disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = v + 0.4  # flat side down, shifted so the bounding circle stays the unit circle
    return (w >= 0.0) & (u * u + w * w <= 0.81)


_SHAPES: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], ...] = (
    ("disk", lambda u, v: u * u + v * v <= 1.0),
    ("square", lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.7),
    ("triangle", _triangle),
    ("plus", lambda u, v: _two_bars(u.abs(), v.abs(), 0.3, 0.95)),
    ("ring", lambda u, v: _band(u * u + v * v, 0.3, 1.0)),
    ("bar", lambda u, v: (u.abs() <= 0.95) & (v.abs() <= 0.3)),
    ("half_disk", _half_disk),
    ("star", lambda u, v: _triangle(u, v) | _triangle(u, -v)),  # hexagram
    ("frame", lambda u, v: _band(torch.maximum(u.abs(), v.abs()), 0.35, 0.7)),
    ("diamond", lambda u, v: u.abs() + v.abs() <= 1.0),
    ("cross", lambda u, v: _two_bars((u + v).abs(), (u - v).abs(), 0.42, 1.34)),  # the plus, turned
    # two triangles meeting at their tips: a bow tie standing upright
    ("hourglass", lambda u, v: (u.abs() <= v.abs() * 0.8) & (v.abs() <= 0.78)),
)

SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in _SHAPES)
"""Names of the shapes, in class-index order (``num_classes=k`` uses the first ``k``)."""


def inside_shape(kinds: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Which points ``(u, v)`` of shape ``(N, ...)`` lie inside the shape ``kinds`` ``(N,)``
    of their object."""
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
