r"""Average drop, average gain and increase in confidence (Grad-CAM++, Opti-CAM).

With ``p`` the target-class probability on the clean image and ``o`` the probability
on the image multiplied by its min-max normalised map (resized to the image):

.. math::

    \mathrm{AD} = 100\,\mathrm{mean}\frac{(p - o)^+}{p}, \qquad
    \mathrm{AG} = 100\,\mathrm{mean}\frac{(o - p)^+}{1 - p}, \qquad
    \mathrm{IC} = 100\,\mathrm{mean}\,\mathbb{1}[o > p].

Lower AD, higher AG and IC are better; the functions return the per-example terms
(:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized.attr.map_postprocessing import normalize_per_example
from captum_regularized.metrics._field_wrappers import takes_arguments_of
from captum_regularized.metrics._perturbation import check_map_settings, prepare_batch
from captum_regularized.metrics._ratio import ratio_or_zero

__all__ = [
    "ConfidenceChange",
    "average_drop",
    "average_gain",
    "confidence_change",
    "increase_in_confidence",
]


class ConfidenceChange(NamedTuple):
    """Per-example terms ``(B,)`` of AD, AG and IC (percent), and ``p`` and ``o``.

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

    Arguments as in :func:`~captum_regularized.metrics.deletion_curve`; the maps,
    brought to ``(B, 1, H, W)`` as there, are min-max normalised per example.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> confidence_change(model, torch.rand(2, 1, 2, 2), torch.rand(2, 2, 2)).drop.shape
    torch.Size([2])
    """
    check_map_settings(channel_reduction, internal_batch_size)
    prepared = prepare_batch(
        forward_func, inputs, attributions, channel_reduction=channel_reduction,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
    )
    if prepared.size == 0:
        return ConfidenceChange(*[torch.zeros(0, device=prepared.inputs.device)] * 5)
    masked = prepared.inputs * normalize_per_example(prepared.maps).to(prepared.inputs.dtype)
    reduce, p = prepared.target_probability(target, apply_softmax=apply_softmax)
    o = prepared.evaluate(prepared.size, lambda index: (masked[index], index), reduce)
    drop = 100 * ratio_or_zero((p - o).clamp(min=0), p)
    gain = 100 * ratio_or_zero((o - p).clamp(min=0), 1 - p)
    increase = 100 * (o > p).to(p.dtype)
    return ConfidenceChange(drop, gain, increase, p, o)


@takes_arguments_of(confidence_change)
def average_drop(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Per-example average-drop terms ``100 * (p - o)+ / p``, ``(B,)``; lower is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> average_drop(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2)).shape
    torch.Size([5])
    """
    return confidence_change(*args, **kwargs).drop


@takes_arguments_of(confidence_change)
def average_gain(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Per-example average-gain terms ``100 * (o - p)+ / (1 - p)``, ``(B,)``; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> average_gain(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2), target=0).shape
    torch.Size([5])
    """
    return confidence_change(*args, **kwargs).gain


@takes_arguments_of(confidence_change)
def increase_in_confidence(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Per-example increase-in-confidence terms ``100 * 1[o > p]``, ``(B,)`` (a tie is none).

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> increase_in_confidence(model, torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2)).shape
    torch.Size([5])
    """
    return confidence_change(*args, **kwargs).increase
