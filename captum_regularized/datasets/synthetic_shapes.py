"""SyntheticShapes: procedurally generated images with a ground-truth mask of the evidence."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, TensorDataset

from captum_regularized.datasets.counter_hash import fold_seed, item_keys
from captum_regularized.datasets.pixel_noise import triangular_noise
from captum_regularized.datasets.shape_layout import RADIUS_RANGE, ShapesLayout, sample_layout
from captum_regularized.datasets.shape_rendering import (
    object_windows,
    window_pixel_indices,
    window_size,
)
from captum_regularized.datasets.shapes import SHAPE_NAMES
from captum_regularized.datasets.textures import textured_background

Indices = int | Sequence[int] | torch.Tensor
CHUNK_PIXELS = 64 * 64 * 64
"""Pixels per chunk when :meth:`SyntheticShapes.tensors` picks the chunk size."""

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
MAX_DISTRACTORS = 6


def _as_index_tensor(indices: Indices, length: int) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be integers, got a tensor of {indices.dtype}")
        tensor = indices.detach().to("cpu", torch.int64).reshape(-1)
    elif isinstance(indices, Sequence):
        tensor = torch.tensor([operator.index(i) for i in indices], dtype=torch.int64)
    else:
        tensor = torch.tensor([operator.index(indices)], dtype=torch.int64)
    if tensor.numel() and (int(tensor.min()) < -length or int(tensor.max()) >= length):
        raise IndexError(f"indices must lie in [-{length}, {length}), got {indices}")
    return torch.where(tensor < 0, tensor + length, tensor)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class SyntheticShapes(Dataset):
    """Procedural shape images with a ground-truth mask of the object that decides the label.

    Each image has a textured, noisy, near-grey background, one red *target* object
    whose shape is the label, and ``num_distractors`` objects in other colours (green,
    blue, yellow, cyan, magenta) whose shapes are other classes. The label is decided by
    the target alone, so a faithful explanation puts its mass inside ``mask``, not on the
    visible but irrelevant distractors. Objects have random size (16-24 % of the image
    side as radius), position and rotation (within 15 degrees); distractors avoid
    overlapping other objects where one of a few candidate places allows it.

    Items are ``(image, label, mask)``: ``image`` float32 ``(3, S, S)`` in ``[0, 1]``
    (multiples of 1/255, like an 8-bit image), ``label`` an int64 scalar tensor and
    ``mask`` bool ``(1, S, S)``, exactly the pixels showing the target. The target is drawn
    last, so it is never occluded and ``mask`` is its whole shape; distractors may be
    partly hidden behind it.

    Every random quantity of item ``i`` is an integer hash of ``(seed, i)`` (see
    :mod:`~captum_regularized.datasets.counter_hash`), rendered with elementwise float
    ops only: the same seed gives the same bytes on every machine and device, item ``i``
    never depends on which other items were rendered, and a data set with another seed is
    an independent held-out set. Labels are exactly balanced within every block of
    ``num_classes`` consecutive indices (a random permutation per block).

    Parameters
    ----------
    num_samples : int
        Number of items.
    image_size : int
        Side ``S`` of the square images, 32 to 224.
    num_classes : int
        Number of shape classes, 2 to ``len(SHAPE_NAMES)`` (12); the first ones are used.
    num_distractors : int
        Distractor objects per image, 0 to 6.
    noise : float
        Standard deviation of the per-pixel, per-channel noise, 0 to 0.5.
    seed : int
        Any non-negative int.

    Examples
    --------
    >>> data = SyntheticShapes(num_samples=100, image_size=32, seed=0)
    >>> image, label, mask = data[0]
    >>> image.shape, image.dtype, mask.shape, mask.dtype
    (torch.Size([3, 32, 32]), torch.float32, torch.Size([1, 32, 32]), torch.bool)
    >>> data.shape_names[label]
    'triangle'
    >>> images, labels, masks = data.render([0, 1])  # vectorised over items
    >>> torch.equal(images[0], image)
    True
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        image_size: int = 32,
        num_classes: int = 10,
        num_distractors: int = 2,
        noise: float = 0.06,
        seed: int = 0,
    ) -> None:
        self.num_samples = _check_int("num_samples", num_samples, 1, 2**31 - 1)
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self.num_classes = _check_int("num_classes", num_classes, 2, len(SHAPE_NAMES))
        self.num_distractors = _check_int("num_distractors", num_distractors, 0, MAX_DISTRACTORS)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)):
            raise TypeError(f"noise must be a float, got {type(noise).__name__}")
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {noise}")
        self.noise = float(noise)
        self.seed = _check_int("seed", seed, 0)
        self._seed_key = fold_seed(seed)

    @property
    def shape_names(self) -> tuple[str, ...]:
        """Class names: ``shape_names[label]`` is the target's shape."""
        return SHAPE_NAMES[: self.num_classes]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, masks = self.render([index])
        return images[0], labels[0], masks[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, "
            f"image_size={self.image_size}, num_classes={self.num_classes}, "
            f"num_distractors={self.num_distractors}, noise={self.noise}, seed={self.seed})"
        )

    def layout(self, indices: Indices, device: str | torch.device | None = None) -> ShapesLayout:
        """Object kinds, centres, radii, rotations and colours of the given items.

        Examples
        --------
        >>> layout = SyntheticShapes(num_samples=10, num_distractors=2).layout([0, 1])
        >>> layout.kinds.shape, layout.centers.shape
        (torch.Size([2, 3]), torch.Size([2, 3, 2]))
        """
        return self._layout(_as_index_tensor(indices, self.num_samples).to(device))

    def _layout(self, index_tensor: torch.Tensor) -> ShapesLayout:
        return sample_layout(
            self._seed_key, index_tensor, self.image_size, self.num_classes, self.num_distractors
        )

    @torch.no_grad()
    def render(
        self, indices: Indices, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render many items at once (vectorised): ``(images, labels, masks)``.

        Parameters
        ----------
        indices : int, sequence of int or integer tensor
            Item indices (negative ones count from the end).
        device : str or torch.device, optional
            Where to render (default: CPU); the bytes are the same on every device.

        Returns
        -------
        tuple of torch.Tensor
            ``images`` float32 ``(B, 3, S, S)``, ``labels`` int64 ``(B,)``, ``masks`` bool
            ``(B, 1, S, S)``.

        Examples
        --------
        >>> data = SyntheticShapes(num_samples=8)
        >>> images, labels, masks = data.render(range(8))
        >>> images.shape, labels.tolist() == [int(data[i][1]) for i in range(8)]
        (torch.Size([8, 3, 32, 32]), True)
        """
        index_tensor = _as_index_tensor(indices, self.num_samples).to(device)
        layout = self._layout(index_tensor)
        keys = item_keys(self._seed_key, index_tensor)
        count, slots = layout.kinds.shape
        size = self.image_size
        visible = self._topmost_objects(layout)  # (B, S*S): 0 background, else priority
        # work in 1/255 units with the rounding offset 0.5 folded into the fill colours
        # (index 0, the background, only adds the offset)
        table = torch.full((count, 3, slots + 1), 0.5, device=keys.device)
        table[:, :, 1:] = layout.colours.flip(1).transpose(1, 2) * 255.0 + 0.5
        fill = table.gather(2, visible[:, None, :].expand(count, 3, size * size))
        background = (textured_background(keys, size) * 255.0).view(count, 3, -1)
        # blending with a 0/1 mask is exact (x * 1 + 0 == x) and much faster than where
        pixels = background * (visible == 0).to(torch.float32)[:, None, :] + fill
        if self.noise > 0:
            pixels = pixels + triangular_noise(keys, size * size, self.noise * 255.0)
        images = pixels.clamp(0.5, 255.5).floor() * (1.0 / 255.0)
        masks = (visible == slots).view(count, 1, size, size)
        return images.view(count, 3, size, size), layout.labels, masks

    def _topmost_objects(self, layout: ShapesLayout) -> torch.Tensor:
        """Per pixel, the drawing priority of the topmost object covering it (0: none).

        Slot ``j`` has priority ``slots - j``: the last distractor is drawn first, the
        target (slot 0) last, on top of everything.
        """
        count, slots = layout.kinds.shape
        size = self.image_size
        window = window_size(RADIUS_RANGE[1] * size, size)
        inside, rows, cols = object_windows(
            layout.kinds.reshape(-1),
            layout.centers.reshape(-1, 2),
            layout.radii.reshape(-1),
            layout.turns.reshape(-1),
            size,
            window,
        )
        device = inside.device
        priority = torch.arange(slots, 0, -1, device=device)
        values = inside.view(count, slots, -1) * priority[None, :, None]
        flat = window_pixel_indices(rows, cols, size, window).view(count, slots, -1)
        flat = flat + (torch.arange(count, device=device) * size * size)[:, None, None]
        topmost = torch.zeros(count * size * size, dtype=torch.int64, device=device)
        topmost.scatter_reduce_(0, flat.reshape(-1), values.reshape(-1), reduce="amax")
        return topmost.view(count, size * size)

    def tensors(
        self, chunk_size: int | None = None, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All items as three tensors ``(images, labels, masks)``, rendered in chunks.

        ``chunk_size`` bounds the working memory (about ``60 * S * S`` bytes per item).
        ``None`` picks :data:`CHUNK_PIXELS` pixels per chunk: rendering is memory-bound,
        and chunks whose working set stays in the CPU caches render several times
        faster than large ones.

        Examples
        --------
        >>> images, labels, masks = SyntheticShapes(num_samples=20).tensors(chunk_size=8)
        >>> images.shape, labels.shape, masks.shape
        (torch.Size([20, 3, 32, 32]), torch.Size([20]), torch.Size([20, 1, 32, 32]))
        """
        if chunk_size is None:
            chunk_size = max(1, CHUNK_PIXELS // (self.image_size * self.image_size))
        _check_int("chunk_size", chunk_size, 1)
        parts = [
            self.render(torch.arange(start, min(start + chunk_size, len(self))), device)
            for start in range(0, len(self), chunk_size)
        ]
        images, labels, masks = zip(*parts)
        return torch.cat(images), torch.cat(labels), torch.cat(masks)

    def materialize(
        self, chunk_size: int | None = None, device: str | torch.device | None = None
    ) -> TensorDataset:
        """All items in a :class:`~torch.utils.data.TensorDataset` (the fast path for training).

        Examples
        --------
        >>> fast = SyntheticShapes(num_samples=20).materialize()
        >>> len(fast), fast[3][2].shape
        (20, torch.Size([1, 32, 32]))
        """
        return TensorDataset(*self.tensors(chunk_size, device))
