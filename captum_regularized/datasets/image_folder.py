"""Real images from an ``ImageFolder`` layout, in the same form as :class:`SyntheticShapes`."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import pil_to_tensor

Item = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes read as 16-bit data (full scale 65535); every other mode is read as 8-bit."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_image_size(image_size: object) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` (or None)."""
    if image_size is None:
        return None
    size = (image_size, image_size) if _is_int(image_size) else image_size
    message = (
        f"image_size must be an int or a pair (height, width) of positive ints, got {image_size!r}"
    )
    if not isinstance(size, (tuple, list)) or (len(size) == 2 and not all(map(_is_int, size))):
        raise TypeError(message)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(message)
    return int(size[0]), int(size[1])


class ImageFolderWithMasks(Dataset):
    """Items ``(image, label, mask-or-None)`` of ``root/<class>/<name>.<ext>`` (torchvision's
    ``ImageFolder`` layout), with optional masks ``mask_root/<class>/<name>.png``.

    ``image`` is float ``(3, H, W)``: RGB divided by its full scale (255, or 65535 for
    16-bit grey files, see :data:`SIXTEEN_BIT_MODES`); ``mask`` is bool ``(1, H, W)``,
    the pixels above half the mask's full scale, or ``None`` without a mask file. Batch
    such items with :func:`collate_with_optional_masks`.

    Parameters
    ----------
    root, mask_root : str or Path
        The image folder; optionally a folder of PNG masks with the same relative paths.
    image_size : int or (int, int), optional
        Resize images (bilinear) and masks (nearest) to ``(height, width)``.
    transform : callable, optional
        Applied to the image tensor; it must keep the size when masks are used.
    extensions : sequence of str
        Image file extensions to accept.

    Raises
    ------
    ValueError
        A folder is missing or holds no class folder with images, ``image_size`` is not
        positive, or a mask's size differs from its image's.
    TypeError, OSError
        ``image_size`` is not an int or a pair of ints; a file cannot be read (named).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (8, 6), (255, 0, 0)).save(root / name / "a.png")
    >>> data = ImageFolderWithMasks(root, image_size=4)
    >>> image, label, mask = data[1]
    >>> data.classes, image.shape, int(label), mask is None
    (['cat', 'dog'], torch.Size([3, 4, 4]), 1, True)
    """

    def __init__(
        self,
        root: str | Path,
        *,
        mask_root: str | Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root must be an existing folder, got {self.root}")
        self.mask_root = None if mask_root is None else Path(mask_root)
        if self.mask_root is not None and not self.mask_root.is_dir():
            raise ValueError(f"mask_root must be an existing folder, got {self.mask_root}")
        self.image_size = _checked_image_size(image_size)
        self.transform = transform
        try:
            self.classes, self.class_to_idx = find_classes(str(self.root))
            self.samples = make_dataset(str(self.root), self.class_to_idx, tuple(extensions))
        except FileNotFoundError as error:
            raise ValueError(f"root {self.root}: {error}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def mask_path(self, index: int) -> Path | None:
        """Where the mask of item ``index`` would be (``None`` without ``mask_root``)."""
        if self.mask_root is None:
            return None
        relative = Path(self.samples[index][0]).relative_to(self.root)
        return (self.mask_root / relative).with_suffix(".png")

    def _load(
        self, path: Path | str, mode: str, resample: Image.Resampling
    ) -> tuple[torch.Tensor, int]:
        """The file's integer pixels ``(C, H, W)`` and their full scale."""
        try:
            with Image.open(path) as picture:
                if picture.mode in SIXTEEN_BIT_MODES:
                    picture, full_scale = picture.convert("I"), 65535
                else:
                    picture, full_scale = picture.convert(mode), 255
                if self.image_size is not None:
                    height, width = self.image_size
                    picture = picture.resize((width, height), resample)
                values = pil_to_tensor(picture)
        except (OSError, SyntaxError) as error:
            if str(path) in str(error):
                raise
            raise OSError(f"cannot read image file {path}: {error}") from error
        if full_scale == 65535:
            if values.min() < 0 or values.max() > full_scale:
                raise ValueError(
                    f"image file {path} holds integers outside 0..65535; only 8-bit and "
                    "16-bit images are supported"
                )
            values = values.repeat(len(mode), 1, 1)
        return values, full_scale

    def __getitem__(self, index: int) -> Item:
        path, label = self.samples[index]
        values, full_scale = self._load(path, "RGB", Image.Resampling.BILINEAR)
        image = values.float() / full_scale
        if self.transform is not None:
            image = self.transform(image)
        mask = None
        mask_path = self.mask_path(index)
        if mask_path is not None and mask_path.is_file():
            values, full_scale = self._load(mask_path, "L", Image.Resampling.NEAREST)
            mask = values > full_scale // 2
            if mask.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"mask {mask_path} has size {tuple(mask.shape[-2:])} but the image has "
                    f"{tuple(image.shape[-2:])}; pass image_size to resize both"
                )
        return image, torch.tensor(label, dtype=torch.long), mask


def collate_with_optional_masks(
    batch: Sequence[Item],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``DataLoader`` collate for ``(image, label, mask-or-None)`` items: masks are stacked,
    or ``None`` when no item has one; a ValueError when only some have one.

    Examples
    --------
    >>> item = (torch.zeros(3, 2, 2), torch.tensor(0), None)
    >>> images, labels, masks = collate_with_optional_masks([item, item])
    >>> images.shape, labels.tolist(), masks
    (torch.Size([2, 3, 2, 2]), [0, 0], None)
    """
    images, labels = default_collate([(item[0], item[1]) for item in batch])
    masks = [item[2] for item in batch]
    present = sum(mask is not None for mask in masks)
    if present == 0:
        return images, labels, None
    if present < len(masks):
        raise ValueError(
            f"{len(masks) - present} of {len(masks)} items in this batch have no mask; "
            "give every image a mask file, or none"
        )
    return images, labels, default_collate(masks)
