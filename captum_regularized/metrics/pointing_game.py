r"""Localisation against ground-truth masks: the pointing game and its energy version.

* Pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside
  the mask; a constant map points nowhere.
* Energy-based pointing game (Score-CAM, Wang et al., 2020):
  :math:`\sum_p m_p^+ M_p / \sum_p m_p^+`, 0 without positive values.

Maps are brought to the mask's resolution; ties and conventions:
:doc:`/design_notes/metrics`.
"""

from __future__ import annotations

import torch

from captum_regularized._internal.checks import warn_if_every_map_zero
from captum_regularized._internal.pixel_maps import per_pixel_map
from captum_regularized.metrics._ratio import ratio_or_zero

__all__ = ["energy_pointing_game", "pointing_game"]


def _maps_and_masks(
    attributions: torch.Tensor, masks: torch.Tensor, channel_reduction: str, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ``(B, H*W)`` maps and boolean masks at the mask's resolution."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(
            f"masks must have shape (B, H, W) or (B, 1, H, W), got shape {tuple(masks.shape)}"
        )
    batch, height, width = masks.shape
    if batch == 0:
        raise ValueError("masks must hold at least one example, got batch size 0")
    if attributions.device != masks.device:
        raise ValueError(
            f"attributions are on {attributions.device} but masks are on {masks.device}"
        )
    maps = per_pixel_map(attributions, batch, (height, width), channel_reduction=channel_reduction)
    warn_if_every_map_zero(maps, who)
    return maps.reshape(batch, -1), masks.reshape(batch, -1) != 0


def pointing_game(
    attributions: torch.Tensor, masks: torch.Tensor, *, channel_reduction: str = "max"
) -> torch.Tensor:
    """1.0 where the map's maximum falls inside the mask, else 0.0; shape ``(B,)``.

    ``attributions`` are ``(B, C, h, w)``, ``(B, 1, h, w)``, ``(B, h, w)`` or ``(h, w)``
    maps (channels collapsed by ``channel_reduction``), ``masks`` ``(B, H, W)`` or
    ``(B, 1, H, W)``, non-zero on the object.

    Examples
    --------
    >>> maps = torch.tensor([[[0.1, 0.9], [0.2, 0.3]], [[1.0, 1.0], [1.0, 1.0]]])
    >>> masks = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [1, 1]]])
    >>> pointing_game(maps, masks).tolist()
    [1.0, 0.0]
    """
    maps, inside = _maps_and_masks(attributions, masks, channel_reduction, "pointing_game")
    top = maps.amax(dim=1, keepdim=True)
    constant = maps.amin(dim=1) == top[:, 0]
    hit = ((maps == top) & inside).any(dim=1) & ~constant
    return hit.float()


def energy_pointing_game(
    attributions: torch.Tensor, masks: torch.Tensor, *, channel_reduction: str = "max"
) -> torch.Tensor:
    """Share of positive attribution inside the mask, shape ``(B,)``, in ``[0, 1]``.

    Arguments as in :func:`pointing_game` (``channel_reduction="sum"`` keeps the sign);
    0 for a map without positive values.

    Examples
    --------
    >>> maps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
    >>> masks = torch.tensor([[[1, 0], [1, 0]]])
    >>> energy_pointing_game(maps, masks).tolist()
    [0.75]
    """
    maps, inside = _maps_and_masks(attributions, masks, channel_reduction, "energy_pointing_game")
    positive = maps.clamp(min=0)
    return ratio_or_zero((positive * inside).sum(dim=1), positive.sum(dim=1))
