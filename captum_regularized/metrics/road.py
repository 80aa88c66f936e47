r"""ROAD: remove and debias (Rong et al., "A consistent and efficient evaluation strategy
for attribution methods", ICML 2022).

Deletion metrics replace removed pixels by a constant or a blur, and the *shape* of
the hole then tells the model where the important pixels were: the score drops for the
wrong reason (class information leaks through the mask). ROAD replaces every removed
pixel by the *noisy linear imputation* of its neighbours, which hides the mask's shape,
and needs no retraining.

Noisy linear imputation. For the removed pixels ``U`` of an image ``x``, the imputed
values ``z`` solve, pixel by pixel and channel by channel,

.. math::

    z_i \sum_{j \in N(i)} w_{ij} \;=\; \sum_{j \in N(i)} w_{ij} \,
    \begin{cases} z_j & j \in U \\ x_j & j \notin U \end{cases}
    \qquad (i \in U),

where ``N(i)`` are the (up to 8) neighbours of ``i`` inside the image, ``w = 1/6`` for
the 4 direct and ``1/12`` for the 4 diagonal ones: every removed pixel is the weighted
average of its neighbours. Gaussian noise ``noise * ε`` (``ε ~ N(0, 1)``) is then added
to each imputed value. The system is symmetric positive definite (a graph Laplacian
with Dirichlet values on the kept pixels), so it is solved by conjugate gradients,
matrix-free: one multiplication is a 3x3 stencil over the image, batched over every
image, percentile and channel at once on the inputs' device (see
:func:`noisy_linear_imputation`).

The metric. At removal percentage ``q`` (the paper's 10, 20, ..., 90) MoRF removes the
most relevant pixels and LeRF the least relevant ones, imputes them and scores the
target class. A faithful map makes the MoRF score fall fast (low) and the LeRF score
stay (high). pytorch-grad-cam reports, per example, the mean over the percentiles of
the change ``score(imputed) - score(clean)``: ``morf_mean`` and ``lerf_mean`` here, and
``combined = (lerf_mean - morf_mean) / 2`` (higher is better).
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
from captum_regularized.metrics._perturbation import pixel_ranks, prepare_batch

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

    Attributes
    ----------
    percentiles : Tensor
        ``(K,)``: percent of pixels removed at each point.
    clean : Tensor
        ``(B,)``: target score on the unperturbed images.
    morf, lerf : Tensor or None
        ``(B, K)``: target score after imputing the most (least) relevant ``q`` percent.
    morf_mean, lerf_mean : Tensor or None
        ``(B,)``: mean over the percentiles of ``score - clean`` (pytorch-grad-cam's
        ``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``); lower is
        better for MoRF, higher for LeRF.
    combined : Tensor or None
        ``(B,)``: ``(lerf_mean - morf_mean) / 2`` (``ROADCombined``), with both orders;
        higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> result = road(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), noise=0.0)
    >>> result.morf.shape, torch.allclose(
    ...     result.morf_mean, (result.morf - result.clean[:, None]).mean(1))
    (torch.Size([3, 9]), True)
    """

    percentiles: torch.Tensor
    clean: torch.Tensor
    morf: torch.Tensor | None
    lerf: torch.Tensor | None
    morf_mean: torch.Tensor | None
    lerf_mean: torch.Tensor | None
    combined: torch.Tensor | None


def road_removal_counts(pixels: int, percentiles: Sequence[float]) -> list[int]:
    """Pixels removed at each percentage: those at or past the map's percentile.

    pytorch-grad-cam keeps the pixels strictly below ``numpy.percentile(map, 100 - q)``
    (linear interpolation). For distinct map values that keeps
    ``ceil((pixels - 1) * (100 - q) / 100)`` pixels, computed here exactly (numpy's
    rounding can keep one more when that product is a whole number), so the count is
    within one pixel of ``q`` percent.

    Examples
    --------
    >>> road_removal_counts(64, (10, 50, 90))
    [7, 32, 57]
    """
    return [
        pixels - math.ceil(Fraction(pixels - 1) * (100 - Fraction(q)) / 100)
        for q in percentiles
    ]


def _check_percentiles(percentiles: Sequence[float]) -> list[float]:
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
    return [float(value) for value in values]


def _binomial_blur(padded: torch.Tensor) -> torch.Tensor:
    """``[1 2 1]^T [1 2 1]`` filter of a ``(..., H+2, W+2)`` zero-bordered ``u``, ``(..., H, W)``.

    The neighbour weights are ``W u = (blur(u) - 4 u) / 12``: direct neighbours get
    2/12, diagonal ones 1/12. Two separable passes of shifted slices rather than a
    convolution: a one-channel 3x3 ``conv2d`` is far slower on CPUs, and this is what
    every solver iteration spends its time on.
    """
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
    """The noise-free imputation: ``images`` with the removed pixels solved for.

    Conjugate gradients on the systems ``A z = b`` of every (image, channel) at once,
    with ``A z = U (d z - W z)``: ``U`` the removed pixels, ``d`` the sum of a pixel's
    in-image neighbour weights, ``W`` the weighted neighbour sum. The search direction
    carries a zero border so the stencil needs no padding per iteration. A system stops
    (its step sizes become 0) once its residual is below ``tolerance * |b|``, so its
    answer does not depend on the other images in the batch; the loop ends when all
    have, which is checked on the host every 8 iterations only.
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

    Every removed pixel becomes the weighted average of its in-image neighbours (weight
    1/6 direct, 1/12 diagonal; removed neighbours count with their own imputed value),
    the solution of one sparse symmetric positive definite system per image and
    channel, plus ``noise * N(0, 1)``. Kept pixels are returned unchanged.

    The systems are solved by conjugate gradients with a matrix-free 3x3 stencil,
    all images and channels in one batch on the images' device, in float32 (float64 for
    float64 images) to a relative residual of 1e-6 (1e-12). A dense solve would need
    ``(H W)^2`` memory per image and a per-image sparse direct solver a host loop; the
    stencil costs ``O(H W)`` per iteration and the iterations grow like ``H + W``. The
    values agree with an exact solve to about 1e-6 on small images and 1e-4 on 224x224
    images with large holes in float32, far below the default noise.

    Parameters
    ----------
    images : Tensor
        ``(M, C, H, W)`` floating point; never modified.
    removed : Tensor
        ``(M, 1, H, W)``, ``(M, H, W)`` or ``(H, W)`` booleans, True where a pixel (all
        its channels) is removed.
    noise : float
        Standard deviation of the Gaussian noise added to imputed pixels (the paper's
        0.01); 0 for the plain linear imputation.
    generator : torch.Generator, optional
        Source of the noise (on the images' device).

    Returns
    -------
    Tensor
        ``images`` with the removed pixels imputed, same dtype. An image with every
        pixel removed has nothing to average: its pixels become 0 plus noise.

    Examples
    --------
    >>> image = torch.tensor([[[[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]]])
    >>> removed = torch.zeros(3, 3, dtype=torch.bool)
    >>> removed[1, 1] = True
    >>> noisy_linear_imputation(image, removed, noise=0.0)[0, 0, 1].tolist()
    [1.0, 1.0, 1.0]
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (M, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise TypeError("removed must be a boolean tensor (True where a pixel is removed)")
    mask = removed
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    size = images.shape[2:]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != size \
            or mask.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"removed must have shape (M, 1, H, W), (M, H, W) or (H, W) for images of shape "
            f"{tuple(images.shape)}, got {tuple(removed.shape)}"
        )
    if mask.device != images.device:
        raise ValueError(f"removed is on {mask.device} but images are on {images.device}")
    if not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    mask = mask.expand(images.shape[0], 1, *size)
    with torch.no_grad():
        filled = _linear_imputation(images.detach(), mask)
        if noise > 0:
            jitter = torch.randn(
                filled.shape, generator=generator, device=filled.device, dtype=filled.dtype
            )
            filled = torch.where(mask, filled + noise * jitter, filled)
    return filled.to(images.dtype)


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
    r"""ROAD curves of every example: imputed MoRF / LeRF scores at each percentage.

    For each percentage ``q`` and each example, the ``n(q)`` most relevant pixels (MoRF)
    or least relevant pixels (LeRF) are removed, ``n(q)`` as in
    :func:`road_removal_counts` (pytorch-grad-cam's count, within one pixel of ``q``
    percent), and replaced by :func:`noisy_linear_imputation`; the model then scores
    the target class. With ``s_q`` that score and ``s_0`` the clean one,

    .. math::

        \text{morf\_mean} = \frac{1}{K} \sum_q (s^{MoRF}_q - s_0), \quad
        \text{lerf\_mean} = \frac{1}{K} \sum_q (s^{LeRF}_q - s_0), \quad
        \text{combined} = \frac{\text{lerf\_mean} - \text{morf\_mean}}{2}.

    All ``orders x K x B`` images are imputed and scored ``internal_batch_size`` at a
    time on the inputs' device.

    pytorch-grad-cam's ``ROADMostRelevantFirst(p)`` removes ``100 - p`` percent (it
    keeps the pixels below the ``p``-th percentile), so its percentile ``p`` is our
    ``q = 100 - p``; for the symmetric default percentages the means are the same. Its
    targets score what they return: ``ClassifierOutputTarget`` the logit
    (``apply_softmax=False`` here), ``ClassifierOutputSoftmaxTarget`` the probability
    (the default here).

    Parameters
    ----------
    forward_func : callable
        The model, or any function of ``(inputs, *additional_forward_args)`` giving
        ``(B, classes)`` outputs; a module runs in eval mode (restored afterwards)
        without gradients.
    inputs : Tensor
        Images ``(B, C, H, W)``; never modified.
    attributions : Tensor
        Maps ``(B, C, H, W)``, ``(B, 1, h, w)``, ``(B, h, w)`` or ``(h, w)``; channels
        are collapsed with ``channel_reduction`` and other resolutions resized
        bilinearly. Tied pixels rank in raster order (MoRF removes the earlier ones
        first, LeRF the later ones).
    target : int, list, Tensor, tuple, callable or None
        Any Captum target form; ``None`` means the class predicted on ``inputs``; a
        target callable stands for its integer ``category`` (pytorch-grad-cam's
        ``ClassifierOutputTarget(k)``).
    percentiles : sequence of float
        Percent of pixels removed, each strictly between 0 and 100.
    order : {"both", "morf", "lerf"}
        Which orders to compute.
    noise : float
        Standard deviation of the imputation noise (the paper's 0.01).
    channel_reduction : {"max", "sum", "mean"}
        See :func:`~captum_regularized.attr.reduce_channels`.
    apply_softmax : bool
        Score the softmax probability (``False``: the raw output).
    internal_batch_size : int, optional
        Images imputed and scored at once (default 128); bounds memory.
    additional_forward_args : Any
        Extra forward arguments (per-example tensors follow their example).
    generator : torch.Generator, optional
        Source of the imputation noise, for reproducible scores.

    Returns
    -------
    ROADResult

    Raises
    ------
    ValueError
        For percentages outside (0, 100), an unknown ``order``, a negative ``noise``,
        and the inputs, maps or targets
        :func:`~captum_regularized.metrics.deletion_curve` refuses.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    >>> result = road(model, x, maps, target=1, percentiles=(20, 50, 80))
    >>> result.morf.shape, result.lerf.shape, result.combined.shape
    (torch.Size([2, 3]), torch.Size([2, 3]), torch.Size([2]))
    >>> road(model, x, maps, order="morf").lerf is None
    True
    """
    levels = _check_percentiles(percentiles)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) \
            or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    prepared = prepare_batch(
        forward_func, inputs, attributions, channel_reduction=channel_reduction,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
    )
    images, batch = prepared.inputs, prepared.size
    device, (height, width) = images.device, images.shape[2:]
    pixels = height * width
    orders = ["morf", "lerf"] if order == "both" else [order]
    steps = len(levels)
    fractions = torch.tensor(levels, device=device, dtype=torch.float32)
    if batch == 0:
        empty = torch.zeros(0, steps, device=device)
        curves = {name: empty if name in orders else None for name in ("morf", "lerf")}
        means = {name: empty[:, 0] if name in orders else None for name in ("morf", "lerf")}
        return ROADResult(
            fractions, empty[:, 0], curves["morf"], curves["lerf"], means["morf"],
            means["lerf"], empty[:, 0] if order == "both" else None,
        )
    reduce, clean = prepared.target_probability(target, apply_softmax=apply_softmax)
    ranks = pixel_ranks(prepared.maps)  # (B, H*W), 0 = most relevant
    counts = torch.tensor(road_removal_counts(pixels, levels), device=device)
    least_first = torch.tensor([name == "lerf" for name in orders], device=device)

    def build(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index = (order * K + step) * B + example
        which, example = index // batch, index % batch
        count = counts[which % steps][:, None]
        rank = ranks[example]
        removed = torch.where(
            least_first[which // steps][:, None], rank >= pixels - count, rank < count
        )
        removed = removed.view(-1, 1, height, width)
        return noisy_linear_imputation(
            images[example], removed, noise=noise, generator=generator
        ), example

    scores = prepared.evaluate(len(orders) * steps * batch, build, reduce)
    scores = scores.view(len(orders), steps, batch).transpose(1, 2)
    curve = dict(zip(orders, scores))
    mean = {name: (values - clean[:, None]).mean(dim=1) for name, values in curve.items()}
    combined = (mean["lerf"] - mean["morf"]) / 2 if order == "both" else None
    return ROADResult(
        fractions, clean, curve.get("morf"), curve.get("lerf"), mean.get("morf"),
        mean.get("lerf"), combined,
    )
