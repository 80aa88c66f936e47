"""A small reference CNN built from ReLU *modules*, so every hook-based method applies."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """Conv stem, three conv blocks, global average pooling and a linear classifier.

    The layout follows the basic CNN of the signed-saliency paper: each block is a
    3x3 convolution (optionally batch-normalised) and a ReLU module; the first two
    blocks halve the resolution with max pooling. Every ReLU is its own ``nn.ReLU``
    instance (not functional, not in-place), so guided backprop, ReLU switching and
    layer hooks all see them. ``model.block3`` is the natural Grad-CAM layer.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : int
        Channels of the input images.
    width : int
        Channels of the stem; the blocks use ``2*width``, ``4*width`` and ``4*width``.
    batch_norm : bool
        Add ``BatchNorm2d`` after every convolution.

    Examples
    --------
    >>> model = SimpleCNN(num_classes=10)
    >>> model(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: int = 16, batch_norm: bool = True
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise ValueError(
                "num_classes, in_channels and width must be positive, got "
                f"{num_classes}, {in_channels}, {width}"
            )
        self.stem = _conv_block(in_channels, width, batch_norm)
        self.block1 = nn.Sequential(*_conv_block(width, 2 * width, batch_norm), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(
            *_conv_block(2 * width, 4 * width, batch_norm), nn.MaxPool2d(2)
        )
        self.block3 = _conv_block(4 * width, 4 * width, batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))
