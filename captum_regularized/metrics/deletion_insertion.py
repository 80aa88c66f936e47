"""Deletion and insertion curves (RISE, Petsiuk et al., BMVC 2018).

Deletion removes the pixels of an image in order of decreasing attribution, in
``steps`` equal chunks, and records the probability of the target class after every
chunk; a faithful map makes it fall fast, so a *lower* area under the curve is
better. Insertion starts from a substrate (by default a blurred copy of the image)
and puts the pixels back in the same order; a *higher* area is better. The area is
the trapezoid rule over the fraction of pixels removed (inserted), so it lies in
``[0, 1]`` for probabilities.

All ``B x steps`` perturbed images are built on the inputs' device and evaluated
``internal_batch_size`` at a time, several steps of several examples per forward
pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.checks import check_finite, check_same_device
from captum_regularized._internal.model_state import find_module
from captum_regularized._internal.targets import class_indices
from captum_regularized.metrics._batched_forward import (
    class_probability,
    clean_outputs,
    pixel_ranks,
    ranked_perturbation_scores,
)
from captum_regularized.metrics._map_shapes import check_image_batch, per_pixel_map
from captum_regularized.metrics._substrate import Substrate, make_substrate

__all__ = [
    "PerturbationCurve",
    "deletion_auc",
    "deletion_curve",
    "insertion_auc",
    "insertion_curve",
]


class PerturbationCurve(NamedTuple):
    """A deletion or insertion curve for every example.

    Attributes
    ----------
    fractions : Tensor
        ``(steps + 1,)``: fraction of pixels removed (deletion) or inserted
        (insertion) at each point, from 0 to 1.
    scores : Tensor
        ``(B, steps + 1)``: target-class probability at each point.
    auc : Tensor
        ``(B,)``: trapezoid area under ``scores`` over ``fractions``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> curve = deletion_curve(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8)
    >>> curve.scores.shape, torch.allclose(
    ...     curve.auc, torch.trapezoid(curve.scores, curve.fractions, dim=1))
    (torch.Size([3, 9]), True)
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


def _curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType,
    *,
    insert: bool,
    steps: int,
    substrate: Substrate,
    channel_reduction: str,
    apply_softmax: bool,
    internal_batch_size: int | None,
    additional_forward_args: Any,
    blur_kernel_size: int,
    blur_sigma: float,
) -> PerturbationCurve:
    batch, _, height, width = check_image_batch(inputs)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    check_same_device((inputs,), find_module(forward_func))
    check_finite((inputs,))
    pixels = height * width
    counts = [k * pixels // steps for k in range(steps + 1)]
    fractions = torch.tensor(counts, device=inputs.device, dtype=torch.float32) / pixels
    maps = per_pixel_map(
        attributions,
        batch,
        (height, width),
        channel_reduction=channel_reduction,
        device=inputs.device,
    )
    background = make_substrate(
        inputs, substrate, blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma
    )
    if batch == 0:
        empty = torch.zeros(0, device=inputs.device)
        return PerturbationCurve(fractions, empty.view(0, steps + 1), empty)
    inputs = inputs.detach()
    outputs = clean_outputs(
        forward_func,
        inputs,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )
    classes = class_indices(outputs, target)
    reduce = class_probability(classes, apply_softmax=apply_softmax)
    clean = reduce(outputs, torch.arange(batch, device=inputs.device))
    # The clean image is the first point of a deletion curve and the last of an
    # insertion curve; only the other ``steps`` points need a forward pass.
    inner = counts[:-1] if insert else counts[1:]
    step_counts = torch.tensor(inner, device=inputs.device)[:, None].expand(steps, batch)
    top, rest = (inputs, background) if insert else (background, inputs)
    perturbed = ranked_perturbation_scores(
        forward_func,
        pixel_ranks(maps),
        step_counts,
        top,
        rest,
        reduce,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    ).T
    pieces = (perturbed, clean[:, None]) if insert else (clean[:, None], perturbed)
    scores = torch.cat(pieces, dim=1)
    auc = torch.trapezoid(scores, fractions, dim=1)
    return PerturbationCurve(fractions, scores, auc)


_PARAMETERS = """
    Parameters
    ----------
    forward_func : callable
        The model, or any function of ``(inputs, *additional_forward_args)`` giving
        ``(B, classes)`` outputs. A module behind it runs in eval mode (restored
        afterwards) without gradients.
    inputs : Tensor
        Images ``(B, C, H, W)``; never modified.
    attributions : Tensor
        Maps ``(B, C, H, W)``, ``(B, 1, h, w)``, ``(B, h, w)`` or ``(h, w)``; channels
        are collapsed with ``channel_reduction`` and other resolutions resized
        bilinearly. Ties keep raster order.
    target : int, list, Tensor, tuple or None
        Any Captum target form; ``None`` means the class predicted on ``inputs``.
    steps : int
        Number of equal chunks of pixels; the curve has ``steps + 1`` points.
    substrate : {"zeros", "blur"}, float or Tensor
        What replaces removed pixels (deletion) or forms the start image (insertion).
    channel_reduction : {"max", "sum", "mean"}
        See :func:`~captum_regularized.attr.reduce_channels`.
    apply_softmax : bool
        Score the softmax of the output (``False`` when the model already returns
        probabilities).
    internal_batch_size : int, optional
        Images per forward pass (default 128); bounds memory.
    additional_forward_args : Any
        Extra forward arguments (per-example tensors follow their example).
    blur_kernel_size, blur_sigma : int, float
        The Gaussian of ``substrate="blur"`` (RISE: 11 and 5).
"""


def deletion_curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    steps: int = 100,
    substrate: Substrate = "zeros",
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> PerturbationCurve:
    """Target-class probability while the most-attributed pixels are removed.

    At step ``k`` the ``floor(k * H * W / steps)`` highest-ranked pixels (all
    channels) are replaced by the substrate. Lower area = more faithful map.
    {parameters}
    Returns
    -------
    PerturbationCurve
        ``fractions``, per-example ``scores`` and ``auc``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> x = torch.rand(2, 3, 8, 8)
    >>> curve = deletion_curve(model, x, torch.rand(2, 8, 8), steps=4)
    >>> curve.scores.shape, curve.fractions.tolist()
    (torch.Size([2, 5]), [0.0, 0.25, 0.5, 0.75, 1.0])
    """
    return _curve(
        forward_func, inputs, attributions, target, insert=False, steps=steps,
        substrate=substrate, channel_reduction=channel_reduction, apply_softmax=apply_softmax,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
        blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma,
    )


def insertion_curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    steps: int = 100,
    substrate: Substrate = "blur",
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> PerturbationCurve:
    """Target-class probability while the most-attributed pixels are put back.

    Starts from the substrate (RISE: a blurred copy) and at step ``k`` restores the
    ``floor(k * H * W / steps)`` highest-ranked pixels. Higher area = better map.
    {parameters}
    Returns
    -------
    PerturbationCurve
        ``fractions``, per-example ``scores`` and ``auc``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> x = torch.rand(2, 3, 8, 8)
    >>> insertion_curve(model, x, torch.rand(2, 1, 4, 4), target=0, steps=4).auc.shape
    torch.Size([2])
    """
    return _curve(
        forward_func, inputs, attributions, target, insert=True, steps=steps,
        substrate=substrate, channel_reduction=channel_reduction, apply_softmax=apply_softmax,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
        blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma,
    )


def deletion_auc(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example area under the deletion curve, shape ``(B,)`` (lower is better).

    Takes the arguments of :func:`deletion_curve` and returns its ``auc``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> deletion_auc(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8).shape
    torch.Size([3])
    """
    return deletion_curve(forward_func, inputs, attributions, target, **kwargs).auc


def insertion_auc(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example area under the insertion curve, shape ``(B,)`` (higher is better).

    Takes the arguments of :func:`insertion_curve` and returns its ``auc``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> insertion_auc(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8).shape
    torch.Size([3])
    """
    return insertion_curve(forward_func, inputs, attributions, target, **kwargs).auc


for _function in (deletion_curve, insertion_curve):
    _function.__doc__ = (_function.__doc__ or "").replace("{parameters}", _PARAMETERS)
