"""The tiny (image, label, mask) data sets the Lightning tests train and validate on."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def small_data(n: int, seed: int) -> TensorDataset:
    """``n`` random 3x8x8 images, labels in ``[0, 3)`` and 8x8 masks, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 3, 8, 8, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
        torch.rand(n, 8, 8, generator=gen) > 0.5,
    )
