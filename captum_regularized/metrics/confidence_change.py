"""Average drop, average gain and increase in confidence (Grad-CAM++, Opti-CAM).

With ``p`` the target-class probability on the clean image and ``o`` the probability
on the image multiplied by its min-max normalised map (resized to the image):

* average drop (lower is better): ``AD = 100 * mean((p - o)+ / p)``
* average gain (higher is better): ``AG = 100 * mean((o - p)+ / (1 - p))``
* increase in confidence (higher is better): ``IC = 100 * mean(1[o > p])``

The functions return the per-example terms (already multiplied by 100), so
``values.mean()`` is the paper's number. Degenerate cases are defined, never NaN:
``p = 0`` gives a drop of 0 and ``p = 1`` a gain of 0 (the numerators vanish there);
a constant map normalises to 0, so the masked image is black.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.checks import check_finite, check_same_device
from captum_regularized._internal.model_state import find_module
from captum_regularized._internal.targets import class_indices
from captum_regularized.attr.map_postprocessing import normalize_per_example
from captum_regularized.metrics._batched_forward import (
    class_probability,
    clean_outputs,
    forward_in_chunks,
)
from captum_regularized.metrics._map_shapes import check_image_batch, per_pixel_map

__all__ = [
    "ConfidenceChange",
    "average_drop",
    "average_gain",
    "confidence_change",
    "increase_in_confidence",
]


class ConfidenceChange(NamedTuple):
    """Per-example terms of AD, AG and IC, and the two probabilities behind them.

    Attributes
    ----------
    drop, gain, increase : Tensor
        ``(B,)`` terms of average drop, average gain and increase in confidence
        (percent; their means are the metrics).
    clean_probability, masked_probability : Tensor
        ``(B,)`` ``p`` and ``o``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> change = confidence_change(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2))
    >>> p, o = change.clean_probability, change.masked_probability
    >>> torch.allclose(change.drop, 100 * (p - o).clamp(min=0) / p)
    True
    """

    drop: torch.Tensor
    gain: torch.Tensor
    increase: torch.Tensor
    clean_probability: torch.Tensor
    masked_probability: torch.Tensor


def _ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def confidence_change(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
) -> ConfidenceChange:
    """AD, AG and IC terms of every example from one pass over clean and masked images.

    Parameters
    ----------
    forward_func : callable
        The model (run in eval mode, restored afterwards, without gradients).
    inputs : Tensor
        Images ``(B, C, H, W)``.
    attributions : Tensor
        Maps that :func:`~captum_regularized.attr.reduce_channels` and bilinear
        resizing bring to ``(B, 1, H, W)``; min-max normalised per example.
    target : int, list, Tensor, tuple or None
        Any Captum target form; ``None`` means the class predicted on ``inputs``.
    channel_reduction : {"max", "sum", "mean"}
        How channels are collapsed before normalising.
    apply_softmax : bool
        Use the softmax of the output as the probability.
    internal_batch_size : int, optional
        Images per forward pass (default 128).
    additional_forward_args : Any
        Extra forward arguments.

    Returns
    -------
    ConfidenceChange

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> result = confidence_change(model, torch.rand(2, 1, 2, 2), torch.rand(2, 2, 2))
    >>> result.drop.shape, bool(((result.drop >= 0) & (result.drop <= 100)).all())
    (torch.Size([2]), True)
    """
    batch, _, height, width = check_image_batch(inputs)
    check_same_device((inputs,), find_module(forward_func))
    check_finite((inputs,))
    maps = per_pixel_map(
        attributions,
        batch,
        (height, width),
        channel_reduction=channel_reduction,
        device=inputs.device,
    )
    if batch == 0:
        empty = torch.zeros(0, device=inputs.device)
        return ConfidenceChange(empty, empty, empty, empty, empty)
    inputs = inputs.detach()
    masked = inputs * normalize_per_example(maps).to(inputs.dtype)
    outputs = clean_outputs(
        forward_func,
        inputs,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )
    classes = class_indices(outputs, target)
    reduce = class_probability(classes, apply_softmax=apply_softmax)
    p = reduce(outputs, torch.arange(batch, device=inputs.device))
    o = forward_in_chunks(
        forward_func,
        batch,
        lambda index: (masked[index], index),
        reduce,
        batch=batch,
        device=inputs.device,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )
    drop = 100 * _ratio_or_zero((p - o).clamp(min=0), p)
    gain = 100 * _ratio_or_zero((o - p).clamp(min=0), 1 - p)
    increase = 100 * (o > p).to(p.dtype)
    return ConfidenceChange(drop, gain, increase, p, o)


def average_drop(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example average-drop terms ``100 * (p - o)+ / p``, shape ``(B,)``; lower is better.

    Takes the arguments of :func:`confidence_change`.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> average_drop(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2)).shape
    torch.Size([5])
    """
    return confidence_change(forward_func, inputs, attributions, target, **kwargs).drop


def average_gain(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example average-gain terms ``100 * (o - p)+ / (1 - p)``, shape ``(B,)``.

    Higher is better.

    Takes the arguments of :func:`confidence_change`.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> average_gain(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2)).shape
    torch.Size([5])
    """
    return confidence_change(forward_func, inputs, attributions, target, **kwargs).gain


def increase_in_confidence(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example increase-in-confidence terms ``100 * 1[o > p]``, shape ``(B,)``.

    Takes the arguments of :func:`confidence_change`.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> sorted(set(increase_in_confidence(model, torch.rand(5, 1, 2, 2),
    ...                                   torch.rand(5, 2, 2)).tolist()) - {0.0, 100.0})
    []
    """
    return confidence_change(forward_func, inputs, attributions, target, **kwargs).increase
