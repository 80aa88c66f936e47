"""Ratios whose zero denominator has a defined value: the metrics are never NaN."""

from __future__ import annotations

import torch

__all__ = ["ratio_or_zero"]


def ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0; never NaN."""
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe, torch.zeros_like(numerator))
