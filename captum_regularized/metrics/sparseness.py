r"""Sparseness of a map: the Gini index of its absolute values (Chalasani et al., 2020).

With the flattened ``|map|`` of an example sorted ascending, :math:`a_1 \le \dots \le a_n`,
:math:`G = \sum_i (2i - n - 1)\, a_i / (n \sum_i a_i)`: 0 when all values are equal,
``1 - 1/n`` when one carries everything; higher is sparser (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import math

import torch

from captum_regularized.metrics._ratio import ratio_or_zero

__all__ = ["gini_sparseness"]


def gini_sparseness(attributions: torch.Tensor) -> torch.Tensor:
    """Gini index of each example's flattened absolute attribution, shape ``(B,)``.

    ``attributions`` ``(B, ...)`` has at least one value per example (channels are not
    reduced: every value counts). Constant and all-zero maps give 0.

    Raises
    ------
    TypeError, ValueError
        For a non-tensor, no batch dimension, no values per example, NaN or infinity.

    Examples
    --------
    >>> gini_sparseness(torch.tensor([[0.0, 0.0, 0.0, 5.0], [1.0, -1.0, 1.0, 1.0]])).tolist()
    [0.75, 0.0]
    """
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() < 2 or math.prod(attributions.shape[1:]) == 0:
        raise ValueError(
            "attributions must have shape (batch, ...) with at least one value per example, "
            f"got shape {tuple(attributions.shape)}"
        )
    values = attributions.detach().reshape(attributions.shape[0], math.prod(attributions.shape[1:]))
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise ValueError("attributions contains NaN or infinite values")
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.abs().to(dtype).sort(dim=1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=dtype) - n - 1
    return ratio_or_zero((values * weights).sum(dim=1), n * values.sum(dim=1))
