r"""ROAD: remove and debias (Rong et al., "A consistent and efficient evaluation strategy
for attribution methods", ICML 2022).

At removal percentage ``q`` MoRF (LeRF) replaces the most (least) relevant pixels by
the *noisy linear imputation* of their neighbours, which hides the shape of the hole,
and scores the target class. With ``s_q`` that score and ``s_0`` the clean one,

.. math::

    \text{morf\_mean} = \tfrac{1}{K} \textstyle\sum_q (s^{MoRF}_q - s_0), \quad
    \text{lerf\_mean} = \tfrac{1}{K} \textstyle\sum_q (s^{LeRF}_q - s_0), \quad
    \text{combined} = (\text{lerf\_mean} - \text{morf\_mean}) / 2,

pytorch-grad-cam's averages; higher ``combined`` is better (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized.metrics._perturbation import (
    PreparedBatch,
    Reducer,
    check_map_settings,
    pixel_ranks,
    prepare_batch,
)

__all__ = [
    "ROAD_PERCENTILES",
    "ROADResult",
    "noisy_linear_imputation",
    "road",
    "road_removal_counts",
]

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""The paper's removal percentages (and pytorch-grad-cam's default)."""

ORDERS = ("morf", "lerf", "both")

_DIRECT, _DIAGONAL = 1 / 6, 1 / 12
"""Neighbour weights of the imputation (Rong et al.); they sum to 1 inside the image."""


class ROADResult(NamedTuple):
    """ROAD scores of every example; the order not asked for is ``None``.

    ``percentiles`` ``(K,)``; ``clean`` ``(B,)`` target scores; ``morf`` and ``lerf``
    ``(B, K)`` imputed scores; ``morf_mean``, ``lerf_mean``, ``combined`` ``(B,)``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> result = road(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), noise=0.0)
    >>> torch.allclose(result.morf_mean, (result.morf - result.clean[:, None]).mean(1))
    True
    """

    percentiles: torch.Tensor
    clean: torch.Tensor
    morf: torch.Tensor | None
    lerf: torch.Tensor | None
    morf_mean: torch.Tensor | None
    lerf_mean: torch.Tensor | None
    combined: torch.Tensor | None


def road_removal_counts(pixels: int, percentiles: Sequence[float]) -> list[int]:
    """Pixels removed at each percentage: pytorch-grad-cam's count, within one of ``q`` %.

    Examples
    --------
    >>> road_removal_counts(64, (10, 50, 90))
    [7, 32, 57]
    """
    return [
        pixels - math.ceil(Fraction(pixels - 1) * (100 - Fraction(q)) / 100)
        for q in percentiles
    ]


def check_road_settings(
    percentiles: Sequence[float], order: str, noise: float, channel_reduction: str,
    internal_batch_size: int | None,
) -> list[float]:
    """The settings of :func:`road`, checked; returns the percentages as floats."""
    if isinstance(percentiles, torch.Tensor):
        percentiles = percentiles.tolist()
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Sequence):
        raise TypeError(
            f"percentiles must be a sequence of numbers, got {type(percentiles).__name__}"
        )
    values = list(percentiles)
    if not values:
        raise ValueError("percentiles must hold at least one removal percentage")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"percentiles must hold numbers, got {value!r}")
        if not 0 < float(value) < 100:
            raise ValueError(
                f"percentiles must lie strictly between 0 and 100 (percent removed), got {value!r}"
            )
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) \
            or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    check_map_settings(channel_reduction, internal_batch_size)
    return [float(value) for value in values]


def _binomial_blur(padded: torch.Tensor) -> torch.Tensor:
    """``[1 2 1]^T [1 2 1]`` filter of a zero-bordered ``(..., H+2, W+2)``, ``(..., H, W)``."""
    rows = padded[..., :, :-2] + padded[..., :, 2:]
    rows.add_(padded[..., :, 1:-1], alpha=2)
    blurred = rows[..., :-2, :] + rows[..., 2:, :]
    return blurred.add_(rows[..., 1:-1, :], alpha=2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image-channel inner product, shape ``(M, C, 1, 1)``."""
    return (a * b).sum(dim=(2, 3), keepdim=True)


def _squared_norm(a: torch.Tensor) -> torch.Tensor:
    """Per image-channel squared norm, shape ``(M, C, 1, 1)``."""
    return torch.linalg.vector_norm(a, dim=(2, 3), keepdim=True).square()


def _linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, *, tolerance: float | None = None
) -> torch.Tensor:
    """The noise-free imputation: conjugate gradients on every (image, channel) at once.

    ``A z = U (d z - W z)``: ``U`` the removed pixels, ``d`` a pixel's in-image neighbour
    weights' sum, ``W`` the weighted neighbour sum (:doc:`/design_notes/metrics`).
    """
    dtype = torch.promote_types(images.dtype, torch.float32)
    if tolerance is None:
        tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    height, width = images.shape[2:]
    x = images.to(dtype)
    unknown = removed.to(dtype)  # (M, 1, H, W)
    known = 1 - unknown
    ones = torch.ones((1, 1, height + 2, width + 2), dtype=dtype, device=x.device)
    ones[..., [0, -1], :] = 0
    ones[..., :, [0, -1]] = 0
    # 12 A z = U (12 d z - 12 W z) = U ((12 d + 4) z - blur(z)), 12 d = blur(1) - 4 inside.
    centre = unknown * _binomial_blur(ones)  # 12 d + 4 on U, 0 elsewhere

    def operator(padded: torch.Tensor) -> torch.Tensor:  # 12 A z
        inner = padded[..., 1:-1, 1:-1]
        return torch.addcmul(centre * inner, unknown, _binomial_blur(padded), value=-1)

    b = unknown * _binomial_blur(F.pad(known * x, (1, 1, 1, 1)))  # 12 b (known * x is 0 on U)
    kept = known.sum(dim=(2, 3), keepdim=True)
    start = (known * x).sum(dim=(2, 3), keepdim=True) / kept.clamp(min=1)
    direction = F.pad(unknown * start, (1, 1, 1, 1))
    residual = b - operator(direction)
    z = direction[..., 1:-1, 1:-1].clone()  # start from the mean kept value
    direction[..., 1:-1, 1:-1] = residual
    inner = direction[..., 1:-1, 1:-1]
    squared = _squared_norm(residual)
    threshold = tolerance**2 * _squared_norm(b)
    active = squared > threshold
    tiny = torch.finfo(dtype).tiny
    for iteration in range(10 * (height + width) + 100):
        if iteration % 8 == 0 and not bool(active.any()):
            break
        product = operator(direction)
        alpha = torch.where(active, squared / _dot(inner, product).clamp(min=tiny), 0.0)
        z.addcmul_(alpha, inner)
        residual.addcmul_(alpha, product, value=-1)
        new_squared = _squared_norm(residual)
        beta = torch.where(active, new_squared / squared.clamp(min=tiny), 0.0)
        torch.addcmul(residual, beta, inner, out=inner)
        squared = torch.where(active, new_squared, squared)
        active = active & (new_squared > threshold)
    return torch.where(removed, z, x)


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace the removed pixels by the noisy linear imputation of their neighbours.

    The imputed values ``z`` solve, for every removed pixel ``i`` and channel,

    .. math::

        z_i \\sum_{j \\in N(i)} w_{ij} = \\sum_{j \\in N(i)} w_{ij} \\, v_j,
        \\qquad v_j = z_j \\text{ if } j \\text{ is removed, else } x_j,

    with ``N(i)`` the up to 8 in-image neighbours, ``w = 1/6`` direct and ``1/12``
    diagonal; then ``noise * N(0, 1)`` is added to each imputed value. Computed in
    float32 (float64 for float64 images) on the images' device.

    Parameters
    ----------
    images, removed : Tensor
        ``(M, C, H, W)`` floating point, never modified; booleans ``(M, 1, H, W)``,
        ``(M, H, W)`` or ``(H, W)``, True where a pixel is removed.
    noise, generator
        Standard deviation of the noise (the paper's 0.01) and its source.

    Returns
    -------
    Tensor
        ``images`` with the removed pixels imputed, same dtype.

    Examples
    --------
    >>> image = torch.tensor([[[[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]]])
    >>> removed = torch.zeros(3, 3, dtype=torch.bool)
    >>> removed[1, 1] = True
    >>> noisy_linear_imputation(image, removed, noise=0.0)[0, 0, 1].tolist()
    [1.0, 1.0, 1.0]
    """
    mask = _checked_mask(images, removed)
    if not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    mask = mask.expand(images.shape[0], 1, *images.shape[2:])
    with torch.no_grad():
        filled = _linear_imputation(images.detach(), mask)
        if noise > 0:
            jitter = torch.randn(
                filled.shape, generator=generator, device=filled.device, dtype=filled.dtype
            )
            filled = torch.where(mask, filled + noise * jitter, filled)
    return filled.to(images.dtype)


def _checked_mask(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``removed`` as ``(M or 1, 1, H, W)``, after checking it and the images."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (M, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise TypeError("removed must be a boolean tensor (True where a pixel is removed)")
    mask = removed[None, None] if removed.dim() == 2 else removed
    mask = mask[:, None] if mask.dim() == 3 else mask
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != images.shape[2:] \
            or mask.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"removed must have shape (M, 1, H, W), (M, H, W) or (H, W) for images of shape "
            f"{tuple(images.shape)}, got {tuple(removed.shape)}"
        )
    if mask.device != images.device:
        raise ValueError(f"removed is on {mask.device} but images are on {images.device}")
    return mask


def _result(
    fractions: torch.Tensor, clean: torch.Tensor, curve: dict[str, torch.Tensor]
) -> ROADResult:
    """The curves of the orders computed, their means and, with both, ``combined``."""
    mean = {name: (values - clean[:, None]).mean(dim=1) for name, values in curve.items()}
    combined = (mean["lerf"] - mean["morf"]) / 2 if len(curve) == 2 else None
    return ROADResult(
        fractions, clean, curve.get("morf"), curve.get("lerf"), mean.get("morf"),
        mean.get("lerf"), combined,
    )


def road(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    order: str = "both",
    noise: float = 0.01,
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    generator: torch.Generator | None = None,
) -> ROADResult:
    """ROAD curves of every example: imputed MoRF / LeRF scores at each percentage.

    For each ``q`` the :func:`road_removal_counts` most (MoRF) or least (LeRF) relevant
    pixels are replaced by :func:`noisy_linear_imputation` and the target class scored.

    Parameters
    ----------
    forward_func, inputs, attributions, target, channel_reduction, apply_softmax
        As in :func:`~captum_regularized.metrics.deletion_curve`, and so are
        ``internal_batch_size`` and ``additional_forward_args``.
    percentiles, order
        Percent of pixels removed, each in ``(0, 100)``; ``"both"``, ``"morf"`` or ``"lerf"``.
    noise, generator
        As in :func:`noisy_linear_imputation`.

    Returns
    -------
    ROADResult

    Raises
    ------
    TypeError, ValueError
        Settings (:func:`check_road_settings`), inputs, maps or targets that do not fit.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model, x, maps = SimpleCNN(3, width=4), torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    >>> result = road(model, x, maps, target=1, percentiles=(20, 50, 80))
    >>> result.morf.shape, result.lerf.shape, result.combined.shape
    (torch.Size([2, 3]), torch.Size([2, 3]), torch.Size([2]))
    """
    levels = check_road_settings(percentiles, order, noise, channel_reduction, internal_batch_size)
    prepared = prepare_batch(
        forward_func, inputs, attributions, channel_reduction=channel_reduction,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
    )
    orders = ["morf", "lerf"] if order == "both" else [order]
    fractions = torch.tensor(levels, device=prepared.inputs.device, dtype=torch.float32)
    if prepared.size == 0:
        empty = torch.zeros(0, len(levels), device=fractions.device)
        return _result(fractions, empty[:, 0], {name: empty for name in orders})
    reduce, clean = prepared.target_probability(target, apply_softmax=apply_softmax)
    scores = _imputed_scores(prepared, reduce, levels, orders, noise, generator)
    return _result(fractions, clean, dict(zip(orders, scores)))


def _imputed_scores(
    prepared: PreparedBatch, reduce: Reducer, levels: list[float], orders: list[str],
    noise: float, generator: torch.Generator | None,
) -> torch.Tensor:
    """``(len(orders), B, K)`` target scores with each step's pixels imputed."""
    images, batch = prepared.inputs, prepared.size
    height, width = images.shape[2:]
    pixels, steps = height * width, len(levels)
    ranks = pixel_ranks(prepared.maps)  # (B, H*W), 0 = most relevant
    counts = torch.tensor(road_removal_counts(pixels, levels), device=images.device)
    least_first = torch.tensor([name == "lerf" for name in orders], device=images.device)

    def build(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        which, example = index // batch, index % batch  # index = (order * K + step) * B + b
        count = counts[which % steps][:, None]
        rank = ranks[example]
        mask = torch.where(
            least_first[which // steps][:, None], rank >= pixels - count, rank < count
        ).view(-1, 1, height, width)
        imputed = noisy_linear_imputation(images[example], mask, noise=noise, generator=generator)
        return imputed, example

    scores = prepared.evaluate(len(orders) * steps * batch, build, reduce)
    return scores.view(len(orders), steps, batch).transpose(1, 2)
