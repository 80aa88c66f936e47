"""Real images from an ``ImageFolder`` layout, in the same form as :class:`SyntheticShapes`.

Point every tool of this package at your own data: items are
``(image, label, mask-or-None)`` with ``image`` float ``(3, H, W)`` in ``[0, 1]``, ``label``
an int64 scalar tensor and ``mask`` bool ``(1, H, W)`` when a ground-truth mask exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import pil_to_tensor

Item = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class ImageFolderWithMasks(Dataset):
    """Images in ``root/<class>/<name>.<ext>``, with optional masks in a parallel folder.

    The layout is torchvision's ``ImageFolder``: one sub-folder per class, classes
    sorted by name. A mask for ``root/cat/001.jpg`` is looked up as
    ``mask_root/cat/001.png`` (any pixel above 127 is inside); images without a mask
    file get ``None``.

    Parameters
    ----------
    root : str or Path
        The image folder.
    mask_root : str or Path, optional
        Folder of PNG masks with the same relative paths (extension ``.png``).
    image_size : int or (int, int), optional
        Resize images (bilinear) and masks (nearest) to this size; ``None`` keeps them.
    transform : callable, optional
        Applied to the image tensor after loading; it must keep the image's size when
        masks are used (the mask is not transformed).
    extensions : sequence of str
        Image file extensions to accept.

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
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if image_size is not None and min(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        self.transform = transform
        try:
            self.classes, self.class_to_idx = find_classes(str(self.root))
            self.samples = make_dataset(
                str(self.root), self.class_to_idx, extensions=tuple(extensions)
            )
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

    def _load(self, path: Path | str, mode: str, resample: Image.Resampling) -> torch.Tensor:
        with Image.open(path) as picture:
            picture = picture.convert(mode)
            if self.image_size is not None:
                height, width = self.image_size
                picture = picture.resize((width, height), resample)
            return pil_to_tensor(picture)

    def __getitem__(self, index: int) -> Item:
        path, label = self.samples[index]
        image = self._load(path, "RGB", Image.Resampling.BILINEAR).float() / 255.0
        if self.transform is not None:
            image = self.transform(image)
        mask = None
        mask_path = self.mask_path(index)
        if mask_path is not None and mask_path.is_file():
            mask = self._load(mask_path, "L", Image.Resampling.NEAREST) > 127
            if mask.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"mask {mask_path} has size {tuple(mask.shape[-2:])} but the image has "
                    f"{tuple(image.shape[-2:])}; pass image_size to resize both"
                )
        return image, torch.tensor(label, dtype=torch.long), mask


def collate_with_optional_masks(
    batch: Sequence[Item],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``DataLoader`` collate for ``(image, label, mask-or-None)`` items.

    Masks are stacked when every item has one and become ``None`` when none has;
    a batch that mixes both is an error (give every image a mask, or none).

    Examples
    --------
    >>> item = (torch.zeros(3, 2, 2), torch.tensor(0), None)
    >>> images, labels, masks = collate_with_optional_masks([item, item])
    >>> images.shape, labels.tolist(), masks
    (torch.Size([2, 3, 2, 2]), [0, 0], None)
    """
    images = torch.stack([item[0] for item in batch])
    labels = torch.stack([item[1] for item in batch])
    masks = [item[2] for item in batch]
    present = sum(mask is not None for mask in masks)
    if present == 0:
        return images, labels, None
    if present < len(masks):
        raise ValueError(
            f"{len(masks) - present} of {len(masks)} items in this batch have no mask; "
            "give every image a mask file, or none"
        )
    return images, labels, torch.stack(masks)  # type: ignore[arg-type]
