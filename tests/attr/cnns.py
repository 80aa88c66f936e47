"""A small CNN for the layer-method tests, with BatchNorm statistics worth keeping."""

from __future__ import annotations

import torch
from torch import nn

from captum_regularized.models import SimpleCNN


def cnn_with_statistics(
    device: torch.device | str = "cpu",
    *,
    num_classes: int = 4,
    dtype: torch.dtype = torch.float32,
) -> SimpleCNN:
    """``SimpleCNN(width=4)`` in eval mode whose BatchNorm running statistics are not 0/1.

    Random running means and variances make the BatchNorm layers do something in eval
    mode, so a method that mishandles them (or a test that restores them) shows.
    """
    model = SimpleCNN(num_classes=num_classes, width=4).eval().to(device=device, dtype=dtype)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model
