"""``train_classifier``'s optimizer step written out, for loss-hook tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def hand_written_step(model: nn.Module, loss: Callable[[], torch.Tensor], lr: float) -> float:
    """One ``train_classifier`` step on a single full batch, written out by hand.

    AdamW with ``train_classifier``'s default weight decay, at the first learning rate
    of its one-cycle schedule for a one-step run. ``loss()`` builds the training loss of
    the batch; its value is returned.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=1, pct_start=0.2)
    value = loss()
    value.backward()
    optimizer.step()
    return float(value.detach())
