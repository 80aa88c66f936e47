r"""Allegiance under deletion: the signed-saliency paper's faithfulness protocol.

Llorente et al. (arXiv 2309.12913) delete, for every fraction ``p`` in
``{0, .03, .05, .07, .1, .2, ..., .9}``, the non-zero pixels among the
``round(p * H * W)`` with the highest map value (all channels; filled black or white),
and measure the *allegiance* :math:`A(p)`, the fraction of examples still predicting
the class predicted on the clean image. The score is :math:`\int A(p)\,dp` by the
trapezoid rule, in ``[0, 0.9]``; lower is better (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from captum_regularized.metrics._perturbation import check_map_settings, prepare_batch

__all__ = ["ALLEGIANCE_FRACTIONS", "AllegianceCurve", "allegiance_deletion_auc"]

ALLEGIANCE_FRACTIONS: tuple[float, ...] = (
    0.0, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
)
"""The deletion fractions of the signed-saliency paper."""

Fill = str | float


class AllegianceCurve(NamedTuple):
    """The allegiance protocol's result.

    ``fractions`` ``(P,)``; ``kept`` ``(B, P)``, whether each example still predicts its
    class; ``allegiance`` ``(P,)``, the share kept (the paper's curve); ``auc``, its
    area (lower is better); ``per_example_auc`` ``(B,)``, whose mean is ``auc``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> curve = allegiance_deletion_auc(model, torch.rand(5, 3, 4, 4), torch.rand(5, 4, 4))
    >>> bool(torch.isclose(curve.per_example_auc.mean(), curve.auc))
    True
    """

    fractions: torch.Tensor
    kept: torch.Tensor
    allegiance: torch.Tensor
    auc: torch.Tensor
    per_example_auc: torch.Tensor


def check_allegiance_settings(
    fill: Fill, fractions: Sequence[float], channel_reduction: str, internal_batch_size: int | None
) -> tuple[float, list[float]]:
    """The settings of :func:`allegiance_deletion_auc`, checked: ``(fill value, fractions)``."""
    values = [float(p) for p in fractions]
    if not values:
        raise ValueError("fractions must hold at least one deletion fraction")
    if any(not 0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"fractions must lie in [0, 1], got {values}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"fractions must be strictly increasing, got {values}")
    fills = {"black": 0.0, "white": 1.0}
    if isinstance(fill, str) and fill not in fills:
        raise ValueError(f"fill must be 'black', 'white' or a number, got {fill!r}")
    if isinstance(fill, bool) or not isinstance(fill, (str, int, float)):
        raise TypeError(f"fill must be 'black', 'white' or a number, got {type(fill).__name__}")
    check_map_settings(channel_reduction, internal_batch_size)
    return fills[fill] if isinstance(fill, str) else float(fill), values


def allegiance_deletion_auc(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    *,
    fill: Fill = "black",
    fractions: Sequence[float] = ALLEGIANCE_FRACTIONS,
    channel_reduction: str = "max",
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
) -> AllegianceCurve:
    """Allegiance curve and its area when the top pixels of each map are deleted.

    Parameters
    ----------
    forward_func, inputs, attributions
        As in :func:`~captum_regularized.metrics.deletion_curve` (``B >= 1``); the
        prediction is the argmax of the model's output.
    channel_reduction, internal_batch_size, additional_forward_args
        As in :func:`~captum_regularized.metrics.deletion_curve`.
    fill : {"black", "white"} or float
        Value written into every channel of a deleted pixel (0, 1 or the number).
    fractions : sequence of float
        Increasing deletion fractions in ``[0, 1]``; default the paper's.

    Returns
    -------
    AllegianceCurve

    Raises
    ------
    TypeError, ValueError
        For an empty batch, bad fractions or fill, and what
        :func:`~captum_regularized.metrics.deletion_curve` refuses.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> result = allegiance_deletion_auc(model, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))
    >>> result.kept.shape, bool(result.kept[:, 0].all()), 0.0 <= float(result.auc) <= 0.9
    (torch.Size([2, 13]), True, True)
    """
    fill_value, values = check_allegiance_settings(
        fill, fractions, channel_reduction, internal_batch_size
    )
    prepared = prepare_batch(
        forward_func, inputs, attributions, channel_reduction=channel_reduction,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
        refuse_empty="allegiance",
    )
    inputs, batch, device = prepared.inputs, prepared.size, prepared.inputs.device
    pixels = inputs.shape[2] * inputs.shape[3]
    wanted = [round(p * pixels) for p in values]
    active = [i for i, count in enumerate(wanted) if count > 0]
    # The non-zero pixels among the top round(p * H * W) lead the zeros-last ranking.
    ordered = torch.sort(prepared.maps.reshape(batch, -1), dim=1, descending=True).values
    nonzero_among_top = torch.cumsum(ordered != 0, dim=1)  # (B, H*W)
    last = torch.tensor([wanted[i] - 1 for i in active], device=device, dtype=torch.long)
    counts = nonzero_among_top.index_select(1, last).T  # (active P, B)
    original = prepared.clean_outputs().argmax(dim=1)

    def still_original(output: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=1) == original[example]

    kept = torch.ones(len(values), batch, dtype=torch.bool, device=device)
    if active:
        evaluated = prepared.ranked_scores(
            counts, torch.full_like(inputs, fill_value), inputs, still_original, zeros_last=True
        )
        kept[active] = evaluated | (counts == 0)
    kept = kept.T
    # Areas in float64, so that a curve kept at 1 throughout gives exactly 0.9.
    x = torch.tensor(values, device=device, dtype=torch.float64)
    per_example_auc = torch.trapezoid(kept.double(), x, dim=1)
    allegiance = kept.double().mean(dim=0)
    auc = torch.trapezoid(allegiance, x).float()
    return AllegianceCurve(x.float(), kept, allegiance.float(), auc, per_example_auc.float())
