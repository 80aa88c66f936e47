"""The harder SyntheticShapes configuration: options checked, what each option changes."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.datasets import SyntheticShapes
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
    ],
)
def test_bad_options_are_named(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        SyntheticShapes(**kwargs)


def test_repr_names_the_new_options() -> None:
    text = repr(SyntheticShapes.configured("harder", 3))
    assert "radius_range=(0.14, 0.2)" in text and "clutter=0.3" in text
