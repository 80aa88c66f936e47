"""Per-example scores of a batch of maps that several sections share."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution
from torch import nn

from captum_regularized.metrics import (
    confidence_change,
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    pointing_game,
)

__all__ = ["cam_quality_scores", "faithfulness_scores", "mask_scores", "upsampled"]


def upsampled(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of layer maps ``(B, 1, h, w)`` to the images' size.

    Examples
    --------
    >>> upsampled(torch.ones(2, 1, 4, 4), torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
    """
    return LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")


def mask_scores(maps: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-example ``energy_in_mask`` and ``pointing_game`` (empty without masks).

    Examples
    --------
    >>> maps, masks = torch.eye(4)[None, None], torch.eye(4, dtype=torch.bool)[None, None]
    >>> {name: score.tolist() for name, score in mask_scores(maps, masks).items()}
    {'energy_in_mask': [1.0], 'pointing_game': [1.0]}
    """
    if masks is None:
        return {}
    return {
        "energy_in_mask": energy_pointing_game(maps, masks).double(),
        "pointing_game": pointing_game(maps, masks).double(),
    }


def faithfulness_scores(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, steps: int
) -> dict[str, torch.Tensor]:
    """Per-example ``deletion_auc`` (black substrate) and ``insertion_auc`` (blur substrate).

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=2).eval()
    >>> scores = faithfulness_scores(model, torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8),
    ...                              torch.tensor([0, 1]), steps=4)
    >>> sorted(scores), tuple(scores["deletion_auc"].shape)
    (['deletion_auc', 'insertion_auc'], (2,))
    """
    return {
        "deletion_auc": deletion_auc(model, images, maps, target=targets, steps=steps).double(),
        "insertion_auc": insertion_auc(model, images, maps, target=targets, steps=steps).double(),
    }


def cam_quality_scores(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, steps: int
) -> dict[str, torch.Tensor]:
    """The CAM papers' per-example scores: AD, AG, IC (percent) and the deletion /
    insertion AUCs.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=2).eval()
    >>> scores = cam_quality_scores(model, torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8),
    ...                             torch.tensor([0, 1]), steps=4)
    >>> list(scores)  # doctest: +NORMALIZE_WHITESPACE
    ['average_drop', 'average_gain', 'increase_in_confidence', 'deletion_auc',
     'insertion_auc']
    """
    change = confidence_change(model, images, maps, target=targets)
    return {
        "average_drop": change.drop.double(),
        "average_gain": change.gain.double(),
        "increase_in_confidence": change.increase.double(),
        **faithfulness_scores(model, images, maps, targets, steps),
    }
