"""Captum's rule for additional forward arguments: a tensor whose dim 0 is the batch
follows the batch when a method splits it; anything else is passed to every call."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_per_example"]


def is_per_example(value: Any, batch: int) -> bool:
    """Whether ``value`` is a per-example additional forward argument of a ``batch``."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
