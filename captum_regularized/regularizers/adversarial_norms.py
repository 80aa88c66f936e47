"""The norms of norm-regularized adversarial training (Gong, Dou & Farnia, 2024), one class each.

The adversary of ``max_delta l(x + delta) - R(delta)`` sees, to first order,
``l(x) + delta^T g - R(delta)`` with ``g = grad_x l``; its best value is
``l(x) + R*(g)`` (``R*`` is the Fenchel conjugate of ``R``) and its maximiser is
``delta* in dR*(g)``. Every norm is a small class holding what the two losses
(:class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss`,
:class:`~captum_regularized.regularizers.GradientNormPenalty`) need of it:

=============== ============================== ============================= ==================
``norm=``       penalty ``R*(g)``              closed form ``delta*``        adversary ``R``
=============== ============================== ============================= ==================
``l1``          ``eps ||g||_1``                ``eps sign(g)``               0 in the box
                                                                             ``|delta| <= eps``
``elastic_net`` ``eps ||g||_1 + eps2 ||g||^2`` ``eps sign(g) + 2 eps2 g``    ``||(|delta| -
                                                                             eps)_+||^2 / (4
                                                                             eps2)``
``group``       ``eps sum_G ||g_G||_2``        ``eps g_G / ||g_G||_2``       0 in every patch's
                                                                             ``eps`` ball
``gaze``        ``eps sum (1-2M) g^2 / ||g||`` ``eps (1 - 2M) g / ||g||_2``  none (closed form
                                                                             only)
=============== ============================== ============================= ==================

Each class also has the projection onto the adversary's feasible set and the
steepest-ascent step of the iterative solver. :data:`NORMS` maps the ``norm=`` string
to the class and :func:`adversarial_norm` builds a validated instance: adding a norm
is adding one class and one row to :data:`NORMS`.

Groups are ``group_size``-sided patches per channel (smaller at the edges); every
division by a norm is zero-safe (:doc:`/design_notes/adversarial_training`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = [
    "NORMS",
    "AdversarialNorm",
    "ElasticNetNorm",
    "GazeNorm",
    "GroupSparsityNorm",
    "L1Norm",
    "adversarial_norm",
    "expand_groups",
    "group_norms",
]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _per_example_l2(x: torch.Tensor) -> torch.Tensor:
    """``||x_i||_2`` broadcastable to ``x`` (shape ``(B, 1, ..., 1)``)."""
    return torch.linalg.vector_norm(_flat(x), dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def _safe_divide(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``x / norm`` with ``0`` wherever ``norm == 0`` (then ``x == 0`` too)."""
    return x / norm.clamp_min(torch.finfo(norm.dtype).tiny)


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
    if x.dim() != 4:
        raise ValueError(
            "norm='group' needs image-shaped inputs (batch, channels, height, width); "
            f"got shape {tuple(x.shape)}"
        )
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


def _check_radius(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class AdversarialNorm:
    """A norm of the adversarial family with its radii (base class; see the subclasses).

    The defaults are those of the indicator norms (``l1``, ``group``): no adversary
    cost inside the feasible set, and a per-example L2-normalised ascent step.

    Parameters
    ----------
    epsilon : float
        Radius ``eps`` (``eps1`` for the elastic net); finite, ``>= 0``.
    epsilon2 : float
        The elastic net's quadratic weight ``eps2`` (``> 0`` there); 0 for the others.
    group_size : int
        Side of the square patches of ``"group"``; ``>= 1``.
    """

    name: ClassVar[str] = ""
    """The ``norm=`` string."""
    iterative: ClassVar[bool] = True
    """Whether the iterative solver applies (``gaze`` has only the closed form)."""

    epsilon: float
    epsilon2: float = 0.0
    group_size: int = 14

    def __post_init__(self) -> None:
        _check_radius("epsilon", self.epsilon)
        _check_radius("epsilon2", self.epsilon2)
        self._check_epsilon2()
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, got {type(self.group_size).__name__}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    def _check_epsilon2(self) -> None:
        if self.epsilon2 != 0:
            raise ValueError(
                f"epsilon2 is only used by norm='elastic_net'; got epsilon2={self.epsilon2} "
                f"with norm={self.name!r}"
            )

    @property
    def norm(self) -> str:
        """The ``norm=`` string of this class."""
        return self.name

    def check_mask(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """Validate ``mask`` (only ``gaze`` takes one): ``None`` here, a mask is refused."""
        if mask is not None:
            raise ValueError(
                f"mask is only used by norm='gaze'; got a mask with norm={self.name!r}"
            )
        return None

    def conjugate_penalty(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``R*(g_i)`` for every example, shape ``(B,)``, differentiable (also at ``g = 0``)."""
        raise NotImplementedError

    def closed_form_maximiser(
        self, g: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The adversary's first-order best response ``delta* in dR*(g)`` (shape of ``g``)."""
        raise NotImplementedError

    def adversary_cost(self, delta: torch.Tensor) -> torch.Tensor:
        """``R(delta_i)`` per example, ``(B,)``, for a feasible ``delta``: 0 here."""
        return delta.new_zeros(delta.shape[0])

    def adversary_cost_gradient(self, delta: torch.Tensor) -> torch.Tensor:
        """``dR/d delta``: zero inside the feasible set of an indicator norm."""
        return torch.zeros_like(delta)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto the feasible set (identity when unconstrained)."""
        return delta

    def ascent_step(
        self, direction: torch.Tensor, step_size: float | torch.Tensor
    ) -> torch.Tensor:
        """One steepest-ascent step of length ``step_size``: the per-example L2-normalised
        ``direction`` here."""
        return step_size * _safe_divide(direction, _per_example_l2(direction))

    def step_radius(self, closed_form: torch.Tensor) -> float | torch.Tensor:
        """The length the default step size is a fraction of: ``eps`` here."""
        return self.epsilon


@dataclass(frozen=True)
class L1Norm(AdversarialNorm):
    """``norm="l1"`` (sparse maps): ``R*(g) = eps ||g||_1``, ``R`` = 0 on the box.

    Examples
    --------
    >>> l1 = L1Norm(0.5)
    >>> g = torch.tensor([[3.0, -4.0, 0.0]])
    >>> l1.conjugate_penalty(g), l1.closed_form_maximiser(g)
    (tensor([3.5000]), tensor([[ 0.5000, -0.5000,  0.0000]]))
    >>> l1.project(torch.tensor([[2.0, -0.1]])), l1.ascent_step(g, 0.1)
    (tensor([[ 0.5000, -0.1000]]), tensor([[ 0.1000, -0.1000,  0.0000]]))
    """

    name: ClassVar[str] = "l1"

    def conjugate_penalty(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``eps ||g_i||_1``."""
        return self.epsilon * _flat(g).abs().sum(1)

    def closed_form_maximiser(
        self, g: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eps sign(g)``, a vertex of the box."""
        return self.epsilon * g.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Clamp to the box ``[-eps, eps]``."""
        return delta.clamp(-self.epsilon, self.epsilon)

    def ascent_step(
        self, direction: torch.Tensor, step_size: float | torch.Tensor
    ) -> torch.Tensor:
        """``step_size * sign(direction)``, steepest for the box."""
        return step_size * direction.sign()


@dataclass(frozen=True)
class ElasticNetNorm(AdversarialNorm):
    """``norm="elastic_net"`` (sparse and smooth maps): ``R*(g) = eps ||g||_1 + eps2 ||g||_2^2``.

    The adversary pays ``R(delta) = ||(|delta| - eps)_+||_2^2 / (4 eps2)``; it is
    unconstrained (no projection), its ascent steps are per-example L2-normalised and
    their default length a fraction of the closed form's L2 norm.

    Examples
    --------
    >>> net = ElasticNetNorm(0.5, 0.25)
    >>> net.conjugate_penalty(torch.tensor([[3.0, -4.0]]))
    tensor([9.7500])
    >>> net.adversary_cost(torch.tensor([[1.5, -0.2]]))
    tensor([1.])
    >>> net.adversary_cost_gradient(torch.tensor([[1.5, -0.2]]))
    tensor([[2., -0.]])
    >>> net.ascent_step(torch.tensor([[3.0, 4.0]]), 1.0)
    tensor([[0.6000, 0.8000]])
    """

    name: ClassVar[str] = "elastic_net"

    def _check_epsilon2(self) -> None:
        if self.epsilon2 <= 0:
            raise ValueError(
                "norm='elastic_net' needs epsilon2 > 0 (the weight of ||g||_2^2); "
                f"got epsilon2={self.epsilon2}. Use norm='l1' for epsilon2 = 0"
            )

    def conjugate_penalty(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``eps ||g_i||_1 + eps2 ||g_i||_2^2``."""
        flat = _flat(g)
        return self.epsilon * flat.abs().sum(1) + self.epsilon2 * flat.square().sum(1)

    def closed_form_maximiser(
        self, g: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eps sign(g) + 2 eps2 g``."""
        return self.epsilon * g.sign() + 2 * self.epsilon2 * g

    def adversary_cost(self, delta: torch.Tensor) -> torch.Tensor:
        """``||(|delta_i| - eps)_+||_2^2 / (4 eps2)``."""
        excess = (delta.abs() - self.epsilon).clamp_min(0)
        return _flat(excess.square()).sum(1) / (4 * self.epsilon2)

    def adversary_cost_gradient(self, delta: torch.Tensor) -> torch.Tensor:
        """``sign(delta) (|delta| - eps)_+ / (2 eps2)``."""
        excess = (delta.abs() - self.epsilon).clamp_min(0)
        return delta.sign() * excess / (2 * self.epsilon2)

    def step_radius(self, closed_form: torch.Tensor) -> float | torch.Tensor:
        """Each example's ``||delta*_i||_2`` (shape ``(B, 1, ..., 1)``)."""
        return _per_example_l2(closed_form)


@dataclass(frozen=True)
class GroupSparsityNorm(AdversarialNorm):
    """``norm="group"`` (maps sparse over patches): ``R*(g) = eps sum_G ||g_G||_2``.

    The feasible set is every patch inside the ``eps`` ball; projection shrinks the
    patches outside it onto the sphere (smaller edge patches included), and an ascent
    step normalises every patch to the step length.

    Examples
    --------
    >>> group = GroupSparsityNorm(1.0, group_size=2)
    >>> g = torch.tensor([[[[3.0, 0.0, -1.0], [4.0, 0.0, 0.0]]]])
    >>> group.conjugate_penalty(g)
    tensor([6.])
    >>> group.closed_form_maximiser(g)
    tensor([[[[ 0.6000,  0.0000, -1.0000],
              [ 0.8000,  0.0000,  0.0000]]]])
    >>> group.project(2 * g)[0, 0, 0]
    tensor([ 0.6000,  0.0000, -1.0000])
    """

    name: ClassVar[str] = "group"

    def _expanded_norms(self, x: torch.Tensor) -> torch.Tensor:
        return expand_groups(group_norms(x, self.group_size), x.shape, self.group_size)

    def conjugate_penalty(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``eps sum_G ||g_G||_2`` over every patch of every channel."""
        return self.epsilon * _flat(group_norms(g, self.group_size)).sum(1)

    def closed_form_maximiser(
        self, g: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eps g_G / ||g_G||_2`` per patch."""
        return self.epsilon * _safe_divide(g, self._expanded_norms(g))

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Shrink every patch with ``||delta_G||_2 > eps`` onto the ``eps``-sphere."""
        norms = group_norms(delta, self.group_size)
        floor = max(self.epsilon, torch.finfo(delta.dtype).tiny)
        scale = self.epsilon / norms.clamp_min(floor)
        return delta * expand_groups(scale, delta.shape, self.group_size)

    def ascent_step(
        self, direction: torch.Tensor, step_size: float | torch.Tensor
    ) -> torch.Tensor:
        """Every patch normalised to length ``step_size`` (steepest for the group ball)."""
        return step_size * _safe_divide(direction, self._expanded_norms(direction))


@dataclass(frozen=True)
class GazeNorm(AdversarialNorm):
    """``norm="gaze"`` (maps inside a mask ``M``): ``R*(g) = eps sum (1 - 2 M) g^2 / ||g||_2``.

    A first-order penalty with no adversary cost (``R = 0`` along its direction) and
    only the closed form ``delta* = eps (1 - 2 M) g / ||g||_2``; it needs a mask with
    values in ``[0, 1]`` (1 = where the gradient belongs).

    Examples
    --------
    >>> gaze, images = GazeNorm(0.1), torch.zeros(2, 3, 4, 4)
    >>> gaze.check_mask(torch.ones(2, 1, 4, 4), images).shape
    torch.Size([2, 1, 4, 4])
    >>> g, mask = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    >>> gaze.conjugate_penalty(g, mask), gaze.closed_form_maximiser(g, mask)
    (tensor([0.1400]), tensor([[-0.0600,  0.0800]]))
    """

    name: ClassVar[str] = "gaze"
    iterative: ClassVar[bool] = False

    def check_mask(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """The mask as a float tensor on ``like``'s device, after checking it.

        It must have the inputs' rank, their batch size and, after the batch dim, their
        sizes or 1 (e.g. ``(B, 1, H, W)`` for ``(B, C, H, W)`` images), and values in
        ``[0, 1]``.
        """
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
                f"mask has shape {tuple(mask.shape)}; expected the inputs' shape "
                f"{tuple(like.shape)} with size-1 dims allowed after the batch dim "
                "(e.g. (B, 1, H, W))"
            )
        mask = mask.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        if not mask.is_floating_point():
            mask = mask.float()
        if not bool(((mask >= 0) & (mask <= 1)).all()):  # NaN fails both comparisons
            raise ValueError("mask values must lie in [0, 1] (no NaN)")
        return mask

    @staticmethod
    def _mask(mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            raise ValueError("norm='gaze' needs a mask")
        return mask

    def conjugate_penalty(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``eps sum_j (1 - 2 M_j) g_j^2 / ||g||_2`` (0 for ``g = 0``)."""
        weighted = _flat((1 - 2 * self._mask(mask)) * g.square()).sum(1)
        return self.epsilon * _safe_divide(weighted, torch.linalg.vector_norm(_flat(g), dim=1))

    def closed_form_maximiser(
        self, g: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eps (1 - 2 M) g / ||g||_2``."""
        return self.epsilon * (1 - 2 * self._mask(mask)) * _safe_divide(g, _per_example_l2(g))


NORMS: dict[str, type[AdversarialNorm]] = {
    cls.name: cls for cls in (L1Norm, ElasticNetNorm, GroupSparsityNorm, GazeNorm)
}
"""The ``norm=`` strings and their classes (``"l1"`` = sparsity, ``"group"`` = group sparsity)."""


def adversarial_norm(
    norm: str, epsilon: float, epsilon2: float = 0.0, group_size: int = 14
) -> AdversarialNorm:
    """The validated norm named ``norm`` with its radii.

    Parameters
    ----------
    norm : {"l1", "elastic_net", "group", "gaze"}
        A key of :data:`NORMS`.
    epsilon, epsilon2, group_size
        As in :class:`AdversarialNorm`.

    Examples
    --------
    >>> adversarial_norm("l1", 0.1)
    L1Norm(epsilon=0.1, epsilon2=0.0, group_size=14)
    >>> adversarial_norm("l2", 0.1)
    Traceback (most recent call last):
    ...
    ValueError: norm must be one of ('l1', 'elastic_net', 'group', 'gaze'), got 'l2'
    """
    cls = NORMS.get(norm) if isinstance(norm, str) else None
    if cls is None:
        raise ValueError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
    return cls(epsilon, epsilon2, group_size)
