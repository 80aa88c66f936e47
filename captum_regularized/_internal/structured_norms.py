"""Per-norm math of norm-regularized adversarial training (Gong, Dou & Farnia, 2024).

The adversary of ``max_delta l(x + delta) - R(delta)`` sees, to first order,
``l(x) + delta^T g - R(delta)`` with ``g = grad_x l``; its best value is
``l(x) + R*(g)`` (``R*`` is the Fenchel conjugate of ``R``) and its maximiser is
``delta* in dR*(g)``. This module holds, for every supported norm, the four pieces
both public classes share:

* ``l1``: ``R*(g) = eps ||g||_1``; ``R`` = 0 on the box ``||delta||_inf <= eps``;
  ``delta* = eps sign(g)``.
* ``elastic_net``: ``R*(g) = eps ||g||_1 + eps2 ||g||_2^2``;
  ``R(delta) = ||(|delta| - eps)_+||_2^2 / (4 eps2)``; ``delta* = eps sign(g) + 2 eps2 g``.
* ``group``: ``R*(g) = eps sum_G ||g_G||_2``; ``R`` = 0 on ``max_G ||delta_G||_2 <= eps``;
  ``delta*_G = eps g_G / ||g_G||_2``.
* ``gaze`` (mask ``M`` in [0, 1]): ``R*(g) = eps sum_j (1 - 2 M_j) g_j^2 / ||g||_2``, a
  first-order penalty with no adversary cost (``R = 0`` along its direction);
  ``delta* = eps (1 - 2 M) g / ||g||_2``.

Groups are non-overlapping ``group_size x group_size`` spatial patches of each
channel of a ``(B, C, H, W)`` tensor. When ``group_size`` does not divide ``H`` (or
``W``), the last row (column) of patches is *smaller*: it holds the remaining
``H mod group_size`` rows (columns). Nothing is dropped and no error is raised.

Every division by a norm is zero-safe: a zero gradient (or a zero group) gives a zero
perturbation and a zero penalty, never NaN, and the penalties have finite gradients
there (needed for double back-propagation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "NORMS",
    "NormSpec",
    "adversary_cost",
    "adversary_cost_gradient",
    "ascent_step",
    "check_mask",
    "closed_form_maximiser",
    "conjugate_penalty",
    "expand_groups",
    "group_norms",
    "project",
]

NORMS = ("l1", "elastic_net", "group", "gaze")
"""The supported norms (``"l1"`` = sparsity, ``"group"`` = group sparsity)."""


@dataclass(frozen=True)
class NormSpec:
    """A validated choice of norm and its radii.

    Parameters
    ----------
    norm : {"l1", "elastic_net", "group", "gaze"}
        Which structure the penalty on the input gradient encourages.
    epsilon : float
        Radius ``eps`` (``eps1`` for the elastic net); ``>= 0``.
    epsilon2 : float
        The elastic net's quadratic weight ``eps2`` (``> 0`` there); must be 0 otherwise.
    group_size : int
        Side of the square patches of ``"group"``; ``>= 1``.

    Examples
    --------
    >>> NormSpec("l1", 0.1).epsilon
    0.1
    >>> NormSpec("l2", 0.1)
    Traceback (most recent call last):
    ...
    ValueError: norm must be one of ('l1', 'elastic_net', 'group', 'gaze'), got 'l2'
    """

    norm: str
    epsilon: float
    epsilon2: float = 0.0
    group_size: int = 14

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        for name in ("epsilon", "epsilon2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.norm == "elastic_net" and self.epsilon2 <= 0:
            raise ValueError(
                "norm='elastic_net' needs epsilon2 > 0 (the weight of ||g||_2^2); "
                f"got epsilon2={self.epsilon2}. Use norm='l1' for epsilon2 = 0"
            )
        if self.norm != "elastic_net" and self.epsilon2 != 0:
            raise ValueError(
                f"epsilon2 is only used by norm='elastic_net'; got epsilon2={self.epsilon2} "
                f"with norm={self.norm!r}"
            )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, got {type(self.group_size).__name__}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _per_example_l2(x: torch.Tensor) -> torch.Tensor:
    """``||x_i||_2`` broadcastable to ``x`` (shape ``(B, 1, ..., 1)``)."""
    return torch.linalg.vector_norm(_flat(x), dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def _safe_divide(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``x / norm`` with ``0`` wherever ``norm == 0`` (then ``x == 0`` too)."""
    return x / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            "norm='group' needs image-shaped inputs (batch, channels, height, width); "
            f"got shape {tuple(x.shape)}"
        )


def group_norms(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """L2 norm of every patch: shape ``(B, C, ceil(H / s), ceil(W / s))``.

    Edge patches are smaller when ``s`` does not divide ``H`` or ``W``.

    Examples
    --------
    >>> x = torch.ones(1, 1, 3, 3)
    >>> group_norms(x, 2).square().round()[0, 0]
    tensor([[4., 2.],
            [2., 1.]])
    """
    _check_image(x)
    batch, channels, height, width = x.shape
    rows, cols = -(-height // group_size), -(-width // group_size)
    padded = F.pad(x, (0, cols * group_size - width, 0, rows * group_size - height))
    patches = padded.reshape(batch, channels, rows, group_size, cols, group_size)
    return torch.linalg.vector_norm(patches, dim=(3, 5))


def expand_groups(values: torch.Tensor, shape: torch.Size, group_size: int) -> torch.Tensor:
    """Spread one value per patch back over the patch's pixels (inverse of the grouping).

    Examples
    --------
    >>> expand_groups(torch.tensor([[[[1.0, 2.0]]]]), torch.Size([1, 1, 1, 3]), 2)
    tensor([[[[1., 1., 2.]]]])
    """
    batch, channels, rows, cols = values.shape
    full = values[:, :, :, None, :, None].expand(
        batch, channels, rows, group_size, cols, group_size
    )
    full = full.reshape(batch, channels, rows * group_size, cols * group_size)
    return full[:, :, : shape[2], : shape[3]]


def check_mask(
    spec: NormSpec, mask: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor | None:
    """Validate ``mask`` for ``spec`` and return it as a float tensor on ``like``'s device.

    ``"gaze"`` requires a mask with values in ``[0, 1]`` and the inputs' rank whose
    batch size matches and whose other dims match or are 1 (e.g. ``(B, 1, H, W)``
    for ``(B, C, H, W)`` images); every other norm rejects one.

    Examples
    --------
    >>> spec, images = NormSpec("gaze", 0.1), torch.zeros(2, 3, 4, 4)
    >>> check_mask(spec, torch.ones(2, 1, 4, 4), images).shape
    torch.Size([2, 1, 4, 4])
    """
    if spec.norm != "gaze":
        if mask is not None:
            raise ValueError(
                f"mask is only used by norm='gaze'; got a mask with norm={spec.norm!r}"
            )
        return None
    if mask is None:
        raise ValueError(
            "norm='gaze' needs a mask (values in [0, 1], 1 = where the gradient belongs)"
        )
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    fits = mask.dim() == like.dim() and mask.shape[0] == like.shape[0] and all(
        m in (1, n) for m, n in zip(mask.shape[1:], like.shape[1:])
    )
    if not fits:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected the inputs' shape {tuple(like.shape)} "
            "with size-1 dims allowed after the batch dim (e.g. (B, 1, H, W))"
        )
    mask = mask.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
    if not mask.is_floating_point():
        mask = mask.float()
    if not bool(((mask >= 0) & (mask <= 1)).all()):  # NaN fails both comparisons
        raise ValueError("mask values must lie in [0, 1] (no NaN)")
    return mask


def conjugate_penalty(
    spec: NormSpec, g: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``R*(g_i)`` for every example, shape ``(B,)``, differentiable (also at ``g = 0``).

    Examples
    --------
    >>> g = torch.tensor([[3.0, -4.0]])
    >>> conjugate_penalty(NormSpec("l1", 0.5), g)
    tensor([3.5000])
    >>> conjugate_penalty(NormSpec("elastic_net", 0.5, 0.1), g)
    tensor([6.])
    """
    eps = spec.epsilon
    if spec.norm == "l1":
        return eps * _flat(g).abs().sum(1)
    if spec.norm == "elastic_net":
        flat = _flat(g)
        return eps * flat.abs().sum(1) + spec.epsilon2 * flat.square().sum(1)
    if spec.norm == "group":
        return eps * _flat(group_norms(g, spec.group_size)).sum(1)
    if mask is None:
        raise ValueError("norm='gaze' needs a mask")
    weighted = _flat((1 - 2 * mask) * g.square()).sum(1)
    return eps * _safe_divide(weighted, torch.linalg.vector_norm(_flat(g), dim=1))


def closed_form_maximiser(
    spec: NormSpec, g: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The adversary's first-order best response ``delta* in dR*(g)`` (shape of ``g``).

    Examples
    --------
    >>> closed_form_maximiser(NormSpec("l1", 0.5), torch.tensor([[3.0, -4.0, 0.0]]))
    tensor([[ 0.5000, -0.5000,  0.0000]])
    """
    eps = spec.epsilon
    if spec.norm == "l1":
        return eps * g.sign()
    if spec.norm == "elastic_net":
        return eps * g.sign() + 2 * spec.epsilon2 * g
    if spec.norm == "group":
        norms = expand_groups(group_norms(g, spec.group_size), g.shape, spec.group_size)
        return eps * _safe_divide(g, norms)
    if mask is None:
        raise ValueError("norm='gaze' needs a mask")
    return eps * (1 - 2 * mask) * _safe_divide(g, _per_example_l2(g))


def adversary_cost(spec: NormSpec, delta: torch.Tensor) -> torch.Tensor:
    """``R(delta_i)`` per example, shape ``(B,)``, for a feasible ``delta``.

    The indicator norms (``l1``, ``group``) cost 0 on their feasible set (use
    :func:`project` to stay there); ``gaze`` has no adversary cost (0).

    Examples
    --------
    >>> adversary_cost(NormSpec("elastic_net", 0.5, 0.25), torch.tensor([[1.5, -0.2]]))
    tensor([1.])
    """
    if spec.norm != "elastic_net":
        return delta.new_zeros(delta.shape[0])
    excess = (delta.abs() - spec.epsilon).clamp_min(0)
    return _flat(excess.square()).sum(1) / (4 * spec.epsilon2)


def adversary_cost_gradient(spec: NormSpec, delta: torch.Tensor) -> torch.Tensor:
    """``dR/d delta`` (zero for the indicator norms inside their feasible set).

    Examples
    --------
    >>> adversary_cost_gradient(NormSpec("elastic_net", 0.5, 0.25), torch.tensor([[1.5, -0.2]]))
    tensor([[2., -0.]])
    """
    if spec.norm != "elastic_net":
        return torch.zeros_like(delta)
    excess = (delta.abs() - spec.epsilon).clamp_min(0)
    return delta.sign() * excess / (2 * spec.epsilon2)


def project(spec: NormSpec, delta: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the adversary's feasible set (identity when unconstrained).

    ``l1``: clamp to the box ``[-eps, eps]``; ``group``: shrink every patch with
    ``||delta_G||_2 > eps`` onto the ``eps``-sphere (smaller edge patches included).

    Examples
    --------
    >>> project(NormSpec("l1", 0.5), torch.tensor([[2.0, -0.1]]))
    tensor([[ 0.5000, -0.1000]])
    """
    eps = spec.epsilon
    if spec.norm == "l1":
        return delta.clamp(-eps, eps)
    if spec.norm == "group":
        norms = group_norms(delta, spec.group_size)
        floor = max(eps, torch.finfo(delta.dtype).tiny)
        scale = eps / norms.clamp_min(floor)
        return delta * expand_groups(scale, delta.shape, spec.group_size)
    return delta


def ascent_step(
    spec: NormSpec, direction: torch.Tensor, step_size: float | torch.Tensor
) -> torch.Tensor:
    """One steepest-ascent step of length ``step_size`` along ``direction``.

    ``l1``: ``step_size * sign`` (steepest for the box); ``group``: every patch
    normalised to length ``step_size`` (steepest for the group ball); ``elastic_net``
    and ``gaze``: the per-example L2-normalised direction.

    Examples
    --------
    >>> ascent_step(NormSpec("elastic_net", 0.5, 0.1), torch.tensor([[3.0, 4.0]]), 1.0)
    tensor([[0.6000, 0.8000]])
    """
    if spec.norm == "l1":
        return step_size * direction.sign()
    if spec.norm == "group":
        norms = expand_groups(
            group_norms(direction, spec.group_size), direction.shape, spec.group_size
        )
        return step_size * _safe_divide(direction, norms)
    return step_size * _safe_divide(direction, _per_example_l2(direction))
