"""A small CNN for the layer-method tests, with BatchNorm statistics worth keeping, and
the hook the tests' own reference implementations read a layer's value with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def captured_layer(layer: nn.Module, use_input: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict whose ``"a"`` is the layer's output (or first input) of the block's
    forward pass, as it is on the graph; the hook is removed when the block ends."""
    captured: dict[str, torch.Tensor] = {}
    if use_input:
        handle = layer.register_forward_pre_hook(lambda m, i: captured.update(a=i[0]))
    else:
        handle = layer.register_forward_hook(lambda m, i, o: captured.update(a=o))
    try:
        yield captured
    finally:
        handle.remove()
