"""Ratios whose zero denominator has a defined value: the metrics are never NaN."""

from __future__ import annotations

import torch

__all__ = ["ratio_or_zero"]


def ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0.

    The division never sees a zero (no NaN in the forward pass, nor in a gradient
    through it).

    Examples
    --------
    >>> ratio_or_zero(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, -1.0])).tolist()
    [0.5, 0.0, 0.0]
    """
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe, torch.zeros_like(numerator))
