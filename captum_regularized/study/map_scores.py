"""Scores of a batch of maps shared by the sections (means over the examples)."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution
from torch import nn

from captum_regularized.metrics import (
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    pointing_game,
)

__all__ = ["faithfulness_scores", "mask_scores", "upsampled"]


def upsampled(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of layer maps ``(B, 1, h, w)`` to the images' size.

    Examples
    --------
    >>> upsampled(torch.ones(2, 1, 4, 4), torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
    """
    return LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")


def mask_scores(maps: torch.Tensor, masks: torch.Tensor | None) -> dict[str, float]:
    """``energy_in_mask`` and ``pointing_game`` (empty without masks); higher is better.

    Examples
    --------
    >>> masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    >>> masks[..., :2, :2] = True
    >>> maps = torch.zeros(1, 1, 4, 4)
    >>> maps[..., 0, 0] = 1.0
    >>> mask_scores(maps, masks)
    {'energy_in_mask': 1.0, 'pointing_game': 1.0}
    >>> mask_scores(maps, None)
    {}
    """
    if masks is None:
        return {}
    return {
        "energy_in_mask": float(energy_pointing_game(maps, masks).mean()),
        "pointing_game": float(pointing_game(maps, masks).mean()),
    }


def faithfulness_scores(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, steps: int
) -> dict[str, float]:
    """Mean ``deletion_auc`` (black substrate, lower is better) and ``insertion_auc``
    (blur substrate, higher is better) of the target's probability.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=2).eval()
    >>> scores = faithfulness_scores(model, torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8),
    ...                              torch.tensor([0, 1]), steps=4)
    >>> sorted(scores)
    ['deletion_auc', 'insertion_auc']
    """
    return {
        "deletion_auc": float(
            deletion_auc(model, images, maps, target=targets, steps=steps).mean()
        ),
        "insertion_auc": float(
            insertion_auc(model, images, maps, target=targets, steps=steps).mean()
        ),
    }
