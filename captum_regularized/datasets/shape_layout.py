"""Where the objects of a :class:`SyntheticShapes` image go: kinds, places, sizes, colours."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captum_regularized.datasets.counter_hash import Stream, bits_to_unit, hashed_bits, item_keys

RADIUS_RANGE = (0.16, 0.24)
"""Object radius as a fraction of the image side (every shape fits inside its radius)."""
MAX_TURN = 0.13165249758739583
"""``tan(7.5 deg)``: rotations are ``2 * atan(turn)``, so at most 15 degrees either way."""
PLACEMENT_CANDIDATES = 6
"""Candidate centres tried per distractor (the first one that overlaps nothing wins)."""
TARGET_COLOUR = (0.85, 0.12, 0.12)
DISTRACTOR_COLOURS = (  # green, blue, yellow, cyan, magenta
    (0.15, 0.72, 0.2), (0.15, 0.35, 0.9), (0.9, 0.82, 0.12), (0.1, 0.78, 0.85), (0.78, 0.2, 0.85)
)
WARM_DISTRACTOR_COLOURS = (  # orange, pink, dark red, salmon, brick
    (0.92, 0.45, 0.1), (0.85, 0.15, 0.5), (0.6, 0.1, 0.08), (0.95, 0.5, 0.45), (0.8, 0.3, 0.25)
)
DISTRACTOR_PALETTES = {"distinct": DISTRACTOR_COLOURS, "warm": WARM_DISTRACTOR_COLOURS}
"""Distractor colours by name: ``"distinct"`` (green, blue, yellow, cyan, magenta: colour
alone finds the red target) or ``"warm"`` (reds, oranges and pinks near the target's red:
the target must be told apart by a finer difference of colour)."""
COLOUR_JITTER = 0.08
"""Each colour channel of each object moves by up to this much."""


@dataclass(frozen=True)
class ShapesLayout:
    """The objects of a batch of :class:`SyntheticShapes` items; slot 0 is the red target
    (``kinds[:, 0] == labels``), slots ``1..D`` the distractors.

    Attributes
    ----------
    labels : torch.Tensor
        ``(B,)`` class index.
    kinds, radii, turns : torch.Tensor
        ``(B, 1 + D)`` shape index, radius in pixels, rotation as ``tan(angle / 2)``.
    centers : torch.Tensor
        ``(B, 1 + D, 2)`` centres ``(x, y)`` in pixels (pixel centres at ``col + 0.5``).
    colours : torch.Tensor
        ``(B, 1 + D, 3)`` RGB fill colours in ``[0, 1]``.

    Examples
    --------
    >>> from captum_regularized.datasets import SyntheticShapes
    >>> layout = SyntheticShapes(num_samples=4, num_distractors=1).layout([0, 1])
    >>> layout.kinds.shape, bool((layout.kinds[:, 0] != layout.kinds[:, 1]).all())
    (torch.Size([2, 2]), True)
    """

    labels: torch.Tensor
    kinds: torch.Tensor
    centers: torch.Tensor
    radii: torch.Tensor
    turns: torch.Tensor
    colours: torch.Tensor


def balanced_labels(seed_key: int, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels that are a random permutation of ``0..num_classes-1`` in every block of
    ``num_classes`` consecutive indices.
    """
    block_keys = item_keys(seed_key, indices // num_classes)
    order = torch.argsort(hashed_bits(block_keys, Stream.LABELS, num_classes), dim=1, stable=True)
    return order.gather(1, (indices % num_classes)[:, None]).squeeze(1)


def _first_free_candidate(
    candidates: torch.Tensor, radius: torch.Tensor, placed_centers: torch.Tensor,
    placed_radii: torch.Tensor,
) -> torch.Tensor:
    """The first candidate whose disk misses every placed disk, else the least-overlapping."""
    gap = candidates[:, :, None, :] - placed_centers[:, None, :, :]  # (B, K, P, 2)
    distance2 = gap[..., 0] * gap[..., 0] + gap[..., 1] * gap[..., 1]
    reach = radius[:, None, None] + placed_radii[:, None, :]
    clearance = (distance2 / (reach * reach)).amin(2)  # (B, K); >= 1 means no overlap
    count = candidates.shape[1]
    rank = torch.arange(count, 0, -1, device=candidates.device, dtype=torch.float32) + 1.0
    best = torch.where(clearance >= 1.0, rank, clearance).argmax(1)
    return candidates[torch.arange(len(candidates), device=candidates.device), best]


def _object_colours(keys: torch.Tensor, slots: int, palette_name: str) -> torch.Tensor:
    """Target red in slot 0; distractors cycle through the palette from a random start."""
    bits = hashed_bits(keys, Stream.COLOURS, 1 + 3 * slots)
    jitter = (bits_to_unit(bits[:, 1:]).view(len(keys), slots, 3) * 2.0 - 1.0) * COLOUR_JITTER
    colours = DISTRACTOR_PALETTES[palette_name]
    palette = torch.tensor((TARGET_COLOUR, *colours), device=keys.device)
    start = bits[:, :1] % len(colours)
    slot = torch.arange(slots, device=keys.device)[None, :]
    choice = torch.where(slot == 0, 0, (start + slot - 1) % len(colours) + 1)
    return (palette[choice] + jitter).clamp(0.0, 1.0)


def sample_layout(
    seed_key: int, indices: torch.Tensor, image_size: int, num_classes: int,
    num_distractors: int, radius_range: tuple[float, float] = RADIUS_RANGE,
    distractor_palette: str = "distinct",
) -> ShapesLayout:
    """Draw the objects of the given items (a pure function of ``(seed_key, index)``).

    Radii are uniform in ``radius_range * image_size``, rotations within 15 degrees; each
    distractor's centre is the first free one of :data:`PLACEMENT_CANDIDATES`.
    """
    keys = item_keys(seed_key, indices)
    count, size = len(indices), float(image_size)
    low, high = radius_range

    def radius(bits: torch.Tensor) -> torch.Tensor:
        return (bits_to_unit(bits) * (high - low) + low) * size

    def turn(bits: torch.Tensor) -> torch.Tensor:
        return (bits_to_unit(bits) * 2.0 - 1.0) * MAX_TURN

    def position(bits: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return bits_to_unit(bits) * (size - r * 2.0) + r  # the unit disk stays inside

    labels = balanced_labels(seed_key, indices, num_classes)
    target = hashed_bits(keys, Stream.TARGET, 4)
    radii, turns, kinds = [radius(target[:, 0])], [turn(target[:, 1])], [labels]
    centers = [position(target[:, 2:4], radii[0][:, None])]
    per_slot = 3 + 2 * PLACEMENT_CANDIDATES
    bits = hashed_bits(keys, Stream.DISTRACTORS, per_slot * num_distractors)
    for slot_bits in bits.view(count, num_distractors, per_slot).unbind(1):
        r = radius(slot_bits[:, 0])
        other_class = slot_bits[:, 1] % (num_classes - 1) + 1  # offset: never the label
        candidates = position(slot_bits[:, 3:].view(count, -1, 2), r[:, None, None])
        centers.append(
            _first_free_candidate(candidates, r, torch.stack(centers, 1), torch.stack(radii, 1))
        )
        radii.append(r)
        turns.append(turn(slot_bits[:, 2]))
        kinds.append((labels + other_class) % num_classes)
    return ShapesLayout(
        labels=labels,
        kinds=torch.stack(kinds, 1),
        centers=torch.stack(centers, 1),
        radii=torch.stack(radii, 1),
        turns=torch.stack(turns, 1),
        colours=_object_colours(keys, 1 + num_distractors, distractor_palette),
    )
