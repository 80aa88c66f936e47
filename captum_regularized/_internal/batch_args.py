"""Captum's rule for additional forward arguments: a tensor whose dim 0 is the batch
follows the batch when a method splits it; anything else is passed to every call."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_per_example", "rows_of_args"]


def is_per_example(value: Any, batch: int) -> bool:
    """Whether ``value`` is a per-example additional forward argument of a ``batch``."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def rows_of_args(args: tuple[Any, ...] | None, rows: torch.Tensor | slice, batch: int) -> Any:
    """``args`` for the examples ``rows`` of a ``batch``: per-example tensors are indexed,
    everything else is passed on as it is (``None`` stays ``None``)."""
    if args is None:
        return None
    return tuple(arg[rows] if is_per_example(arg, batch) else arg for arg in args)
