"""Captum's rule for additional forward arguments: which ones follow the batch.

A tensor whose dim 0 is the batch size is per-example: a method that splits or
subsets the batch must split or subset it too. Anything else (a shared ``(classes,)``
bias, a 0-d tensor, a string) is passed unchanged to every call.

Users: RSI-Grad-CAM's path batching
(:mod:`captum_regularized.attr.rsi_grad_cam.path_batching`) and the guided-gradient
regularizer, which both split batches.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_per_example"]


def is_per_example(value: Any, batch: int) -> bool:
    """Whether ``value`` is a per-example additional forward argument of a ``batch``.

    Examples
    --------
    >>> is_per_example(torch.ones(4, 2), 4), is_per_example(torch.ones(3), 4)
    (True, False)
    >>> is_per_example(torch.tensor(1.0), 1), is_per_example("x", 4)
    (False, False)
    """
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
