"""SyntheticShapes: procedurally generated images with a ground-truth mask of the evidence."""

from __future__ import annotations

from typing import Any

import torch

from captum_regularized.datasets.counter_hash import fold_seed, item_keys
from captum_regularized.datasets.rendered import Indices, RenderedItems, as_index_tensor, check_int
from captum_regularized.datasets.shape_layout import (
    DISTRACTOR_PALETTES,
    RADIUS_RANGE,
    ShapesLayout,
    sample_layout,
)
from captum_regularized.datasets.shape_rendering import object_windows, window_size
from captum_regularized.datasets.shapes import SHAPE_NAMES
from captum_regularized.datasets.textures import textured_background, triangular_noise

__all__ = ["CONFIGURATIONS", "SyntheticShapes"]

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
MAX_DISTRACTORS = 6
RADIUS_LIMITS = (0.08, 0.3)
"""Bounds of ``radius_range`` (fractions of the image side)."""

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "standard": {"num_distractors": 2, "noise": 0.06, "radius_range": RADIUS_RANGE,
                 "clutter": 0.0},
    "harder": {"num_distractors": 4, "noise": 0.1, "radius_range": (0.14, 0.2),
               "clutter": 0.3, "distractor_palette": "warm"},
}
"""Named settings of :meth:`SyntheticShapes.configured` (``"standard"`` is the default)."""


def _check_float(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float when it is a number in ``[low, high]``; errors name it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _check_radius_range(radius_range: object) -> tuple[float, float]:
    expected = f"a pair (low, high) with {RADIUS_LIMITS[0]} <= low <= high <= {RADIUS_LIMITS[1]}"
    if not isinstance(radius_range, (tuple, list)) or len(radius_range) != 2:
        raise TypeError(f"radius_range must be {expected}, got {radius_range!r}")
    low, high = (_check_float("radius_range", v, *RADIUS_LIMITS) for v in radius_range)
    if low > high:
        raise ValueError(f"radius_range must be {expected}, got {radius_range!r}")
    return low, high


class SyntheticShapes(RenderedItems):
    """Procedural shape images with a ground-truth mask of the object that decides the label.

    Each image has a textured, noisy background, one red *target* whose shape is the
    label, and ``num_distractors`` objects of other shapes and colours: a faithful
    explanation puts its mass inside ``mask``. Items are ``(image, label, mask)``: float32
    ``(3, S, S)`` in multiples of 1/255, int64, and bool ``(1, S, S)`` (the target, never
    occluded). Item ``i`` depends on ``(seed, i)`` alone and is the same bytes on every
    device (:doc:`/design_notes/data_and_study`).

    Parameters
    ----------
    num_samples, image_size, seed : int
        Number of items; side ``S``, 32 to 224; any non-negative seed.
    num_classes, num_distractors : int
        The first 2 to 12 of :data:`SHAPE_NAMES` as classes; distractors per image, 0 to 6.
    noise, clutter : float
        Standard deviation of the per-pixel noise (0 to 0.5); amplitude of coloured
        background clutter (0 to 1).
    radius_range : (float, float)
        Object radius as fractions of the side, within 0.08 to 0.3.
    distractor_palette : {"distinct", "warm"}
        Distractor colours far from (default) or near the target's red.

    Examples
    --------
    >>> data = SyntheticShapes(num_samples=100, image_size=32, seed=0)
    >>> image, label, mask = data[0]
    >>> image.shape, mask.shape, mask.dtype, data.shape_names[label]
    (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]), torch.bool, 'triangle')
    >>> images, labels, masks = data.render([0, 1])  # vectorised over items
    >>> torch.equal(images[0], image)
    True
    >>> harder = SyntheticShapes.configured("harder", 8, image_size=48)
    >>> harder.num_distractors, harder.radius_range, harder.distractor_palette, harder.image_size
    (4, (0.14, 0.2), 'warm', 48)
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        image_size: int = 32,
        num_classes: int = 10,
        num_distractors: int = 2,
        noise: float = 0.06,
        seed: int = 0,
        radius_range: tuple[float, float] = RADIUS_RANGE,
        clutter: float = 0.0,
        distractor_palette: str = "distinct",
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples, 1, 2**31 - 1)
        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self.num_classes = check_int("num_classes", num_classes, 2, len(SHAPE_NAMES))
        self.num_distractors = check_int("num_distractors", num_distractors, 0, MAX_DISTRACTORS)
        self.noise = _check_float("noise", noise, 0, 0.5)
        self.seed = check_int("seed", seed, 0)
        self.radius_range = _check_radius_range(radius_range)
        self.clutter = _check_float("clutter", clutter, 0.0, 1.0)
        if not isinstance(distractor_palette, str) or distractor_palette not in DISTRACTOR_PALETTES:
            raise ValueError(
                f"distractor_palette must be one of {sorted(DISTRACTOR_PALETTES)}, "
                f"got {distractor_palette!r}"
            )
        self.distractor_palette = distractor_palette
        self._seed_key = fold_seed(seed)

    @property
    def shape_names(self) -> tuple[str, ...]:
        """Class names: ``shape_names[label]`` is the target's shape."""
        return SHAPE_NAMES[: self.num_classes]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        fields = ("num_samples", "image_size", "num_classes", "num_distractors", "noise", "seed",
                  "radius_range", "clutter", "distractor_palette")
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in fields)})"

    @classmethod
    def configured(
        cls, name: str, num_samples: int = 10_000, *, seed: int = 0, **options: Any
    ) -> SyntheticShapes:
        """A data set with the named :data:`CONFIGURATIONS`, overridden by ``options``."""
        if name not in CONFIGURATIONS:
            raise ValueError(f"name must be one of {sorted(CONFIGURATIONS)}, got {name!r}")
        return cls(num_samples, seed=seed, **{**CONFIGURATIONS[name], **options})

    def layout(self, indices: Indices, device: str | torch.device | None = None) -> ShapesLayout:
        """Object kinds, centres, radii, rotations and colours of the given items."""
        return self._layout(as_index_tensor(indices, self.num_samples).to(device))

    def _layout(self, index_tensor: torch.Tensor) -> ShapesLayout:
        return sample_layout(
            self._seed_key, index_tensor, self.image_size, self.num_classes,
            self.num_distractors, self.radius_range, self.distractor_palette,
        )

    @torch.no_grad()
    def render(
        self, indices: Indices, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render the items ``indices`` at once on ``device``: ``(images, labels, masks)``."""
        index_tensor = as_index_tensor(indices, self.num_samples).to(device)
        layout = self._layout(index_tensor)
        keys = item_keys(self._seed_key, index_tensor)
        count, slots = layout.kinds.shape
        size = self.image_size
        visible = self._topmost_objects(layout)  # (B, S*S): 0 background, else priority
        table = torch.full((count, 3, slots + 1), 0.5, device=keys.device)
        table[:, :, 1:] = layout.colours.flip(1).transpose(1, 2) * 255.0 + 0.5
        fill = table.gather(2, visible[:, None, :].expand(count, 3, size * size))
        background = (textured_background(keys, size, self.clutter) * 255.0).view(count, 3, -1)
        pixels = background * (visible == 0).to(torch.float32)[:, None, :] + fill
        if self.noise > 0:
            pixels = pixels + triangular_noise(keys, size * size, self.noise * 255.0)
        images = pixels.clamp(0.5, 255.5).floor() * (1.0 / 255.0)
        masks = (visible == slots).view(count, 1, size, size)
        return images.view(count, 3, size, size), layout.labels, masks

    def _topmost_objects(self, layout: ShapesLayout) -> torch.Tensor:
        """Per pixel, the priority ``slots - j`` of the topmost slot ``j`` covering it (0: none)."""
        count, slots = layout.kinds.shape
        size = self.image_size
        window = window_size(self.radius_range[1] * size, size)
        inside, index = object_windows(
            layout.kinds.reshape(-1), layout.centers.reshape(-1, 2), layout.radii.reshape(-1),
            layout.turns.reshape(-1), size, window, per_image=slots,
        )
        priority = torch.arange(slots, 0, -1, device=inside.device)
        values = inside.view(count, slots, -1) * priority[None, :, None]
        topmost = torch.zeros(count * size * size, dtype=torch.int64, device=inside.device)
        topmost.scatter_reduce_(0, index.reshape(-1), values.reshape(-1), reduce="amax")
        return topmost.view(count, size * size)
