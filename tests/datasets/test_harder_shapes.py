"""The harder SyntheticShapes configuration: options checked, what each option changes."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.datasets.shape_layout import (
    COLOUR_JITTER,
    DISTRACTOR_PALETTES,
    TARGET_COLOUR,
)
from captum_regularized.datasets.shape_rendering import render_object_masks
from captum_regularized.datasets.synthetic_shapes import CONFIGURATIONS


def test_standard_configuration_is_the_default_bytes() -> None:
    default = SyntheticShapes(12, seed=3).tensors()
    named = SyntheticShapes.configured("standard", 12, seed=3).tensors()
    assert all(torch.equal(a, b) for a, b in zip(default, named))


def test_harder_configuration_has_its_documented_settings() -> None:
    data = SyntheticShapes.configured("harder", 10, seed=1)
    expected = CONFIGURATIONS["harder"]
    assert data.num_distractors == expected["num_distractors"] == 4
    assert data.radius_range == expected["radius_range"] and data.clutter > 0
    assert SyntheticShapes.configured("harder", 10, num_distractors=1).num_distractors == 1
    with pytest.raises(ValueError, match="name must be one of"):
        SyntheticShapes.configured("hardest", 10)


def test_harder_objects_are_smaller_and_more_numerous() -> None:
    size = 32
    easy = SyntheticShapes(32, image_size=size, seed=5)
    hard = SyntheticShapes.configured("harder", 32, image_size=size, seed=5)
    low, high = hard.radius_range
    layout = hard.layout(range(32))
    assert layout.kinds.shape == (32, 5)
    assert bool((layout.radii >= low * size - 1e-4).all())
    assert bool((layout.radii <= high * size + 1e-4).all())
    # the target covers a smaller share of the image than in the standard data
    easy_area = easy.tensors()[2].float().mean()
    hard_area = hard.tensors()[2].float().mean()
    assert float(hard_area) < 0.85 * float(easy_area)


def test_masks_are_still_exactly_the_target() -> None:
    data = SyntheticShapes.configured("harder", 24, seed=2, noise=0.0)
    images, labels, masks = data.tensors()
    layout = data.layout(range(24))
    own = render_object_masks(
        layout.kinds[:, 0], layout.centers[:, 0], layout.radii[:, 0], layout.turns[:, 0], 32
    )
    assert torch.equal(own, masks[:, 0])
    target_colour = (layout.colours[:, 0] * 255 + 0.5).floor() / 255
    for b in range(24):  # every mask pixel shows the target's colour (drawn last, on top)
        inside = masks[b, 0]
        difference = (images[b] - target_colour[b][:, None, None]).abs().amax(0)
        assert bool((difference[inside] < 1e-6).all())
    assert bool((layout.kinds[:, 1:] != labels[:, None]).all())


def test_clutter_colours_the_background() -> None:
    """Away from every object, the channel spread (a colourfulness proxy) grows with clutter;
    with clutter 0 the background is the near-grey texture."""

    def background_colourfulness(clutter: float) -> float:
        data = SyntheticShapes(32, num_distractors=0, noise=0.0, clutter=clutter, seed=4)
        images, _, masks = data.tensors()
        spread = images.amax(1) - images.amin(1)
        return float(spread[~masks[:, 0]].mean())

    plain, cluttered = background_colourfulness(0.0), background_colourfulness(0.3)
    assert cluttered > plain + 0.1
    assert plain < 0.15


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"radius_range": (0.2, 0.1)}, ValueError, "radius_range"),
        ({"radius_range": (0.01, 0.1)}, ValueError, "radius_range"),
        ({"radius_range": (0.1, 0.5)}, ValueError, "radius_range"),
        ({"radius_range": 0.2}, TypeError, "radius_range"),
        ({"radius_range": (0.1, 0.2, 0.3)}, TypeError, "radius_range"),
        ({"radius_range": ("a", 0.2)}, TypeError, "radius_range"),
        ({"clutter": -0.1}, ValueError, "clutter"),
        ({"clutter": 1.5}, ValueError, "clutter"),
        ({"clutter": None}, TypeError, "clutter"),
        ({"clutter": True}, TypeError, "clutter"),
        ({"distractor_palette": "neon"}, ValueError, "distractor_palette"),
        ({"distractor_palette": None}, ValueError, "distractor_palette"),
    ],
)
def test_bad_options_are_named(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        SyntheticShapes(**kwargs)


def test_repr_names_the_new_options() -> None:
    text = repr(SyntheticShapes.configured("harder", 3))
    assert "radius_range=(0.14, 0.2)" in text and "clutter=0.3" in text
    assert "distractor_palette='warm'" in text


@pytest.mark.parametrize("palette", sorted(DISTRACTOR_PALETTES))
def test_distractors_take_the_named_palette(palette: str) -> None:
    """Every distractor's colour is one palette entry moved by at most the jitter; the
    target keeps its red; the "warm" palette sits nearer the red than the distinct one."""
    data = SyntheticShapes(64, num_distractors=4, seed=7, distractor_palette=palette)
    colours = data.layout(range(64)).colours  # (B, 5, 3)
    entries = torch.tensor(DISTRACTOR_PALETTES[palette])
    red = torch.tensor(TARGET_COLOUR)
    nearest = (colours[:, 1:, None, :] - entries).abs().amax(-1).amin(-1)
    assert bool((nearest <= COLOUR_JITTER + 1e-6).all())
    assert bool(((colours[:, 0] - red).abs() <= COLOUR_JITTER + 1e-6).all())
    used = (colours[:, 1:, None, :] - entries).abs().amax(-1).argmin(-1).unique()
    assert len(used) == len(entries)  # every entry is drawn somewhere


def test_warm_palette_is_nearer_the_target_red() -> None:
    red = torch.tensor(TARGET_COLOUR)

    def mean_distance(name: str) -> float:
        return float((torch.tensor(DISTRACTOR_PALETTES[name]) - red).norm(dim=1).mean())

    assert mean_distance("warm") < 0.5 * mean_distance("distinct")


def test_palette_changes_only_the_distractor_colours() -> None:
    distinct = SyntheticShapes(16, num_distractors=3, seed=9)
    warm = SyntheticShapes(16, num_distractors=3, seed=9, distractor_palette="warm")
    a, b = distinct.layout(range(16)), warm.layout(range(16))
    for field in ("labels", "kinds", "centers", "radii", "turns"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert torch.equal(a.colours[:, 0], b.colours[:, 0])
    assert not torch.equal(a.colours[:, 1:], b.colours[:, 1:])
    assert torch.equal(distinct.tensors()[2], warm.tensors()[2])  # same masks
