"""The data of one seed: a training set and a held-out set (with masks when known)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.study.settings import StudySettings

__all__ = ["TEST_SEED_OFFSET", "SeedData", "StudyData"]

TEST_SEED_OFFSET = 1_000_003
"""The synthetic held-out set of seed ``s`` uses data seed ``s + TEST_SEED_OFFSET``."""


@dataclass(frozen=True)
class SeedData:
    """Training set and held-out tensors of one seed (``masks`` is ``None`` for real data)."""

    train_set: Dataset
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor | None


class StudyData:
    """Where the study's images come from: :class:`SyntheticShapes` or an image folder.

    Parameters
    ----------
    settings : StudySettings
        Sizes.
    folder : Path, optional
        A ``torchvision.datasets.ImageFolder`` layout (one sub-folder per class). Images
        are resized to ``settings.image_size``; each seed draws its own train/test split.
        Without masks, the sections skip their mask metrics.

    Examples
    --------
    >>> from captum_regularized.study.settings import TINY
    >>> seed_data = StudyData(TINY).for_seed(0)
    >>> len(seed_data.train_set), tuple(seed_data.test_masks.shape)
    (96, (32, 1, 32, 32))
    """

    def __init__(self, settings: StudySettings, folder: Path | None = None) -> None:
        self.settings = settings
        self.folder = folder
        self._cache: dict[int, SeedData] = {}
        self._folder_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        if folder is None:
            self.class_names = SyntheticShapes(
                1, num_classes=settings.num_classes
            ).shape_names
            self.image_size = settings.image_size
        else:
            images, labels, self.class_names = _load_folder(folder, settings.image_size)
            self._folder_tensors = (images, labels)
            self.image_size = settings.image_size

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        """Whether ground-truth masks exist (synthetic data only)."""
        return self.folder is None

    @property
    def source(self) -> str:
        """A short description for the report."""
        if self.folder is None:
            s = self.settings
            return (
                f"SyntheticShapes ({s.image_size} px, {s.num_classes} classes, "
                f"{s.num_distractors} distractors)"
            )
        return f"image folder {self.folder} ({self.num_classes} classes, {self.image_size} px)"

    def for_seed(self, seed: int) -> SeedData:
        """The (cached) data of ``seed``."""
        if seed not in self._cache:
            self._cache[seed] = self._synthetic(seed) if self.folder is None else self._split(seed)
        return self._cache[seed]

    def _synthetic(self, seed: int) -> SeedData:
        s = self.settings
        shape = dict(
            image_size=s.image_size, num_classes=s.num_classes, num_distractors=s.num_distractors
        )
        train_set = SyntheticShapes(s.train_samples, seed=seed, **shape).materialize()
        images, labels, masks = SyntheticShapes(
            s.test_samples, seed=seed + TEST_SEED_OFFSET, **shape
        ).tensors()
        return SeedData(train_set, images, labels, masks)

    def _split(self, seed: int) -> SeedData:
        assert self._folder_tensors is not None
        images, labels = self._folder_tensors
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        test_count = min(self.settings.test_samples, max(1, len(labels) // 5))
        test, train = order[:test_count], order[test_count:]
        if len(train) == 0:
            raise ValueError(f"--data {self.folder}: too few images for a train/test split")
        return SeedData(TensorDataset(images[train], labels[train]), images[test], labels[test],
                        None)


def _load_folder(
    folder: Path, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All images of an ``ImageFolder`` as ``(N, 3, S, S)`` floats in [0, 1], labels, names."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.ToTensor()]
    )
    try:
        dataset = datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise ValueError(f"--data {folder}: not an image folder ({error})") from None
    if len(dataset.classes) < 2:
        raise ValueError(f"--data {folder}: needs at least two class sub-folders")
    pairs = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
                          for image, _ in pairs])
    labels = torch.tensor([label for _, label in pairs])
    return images, labels, tuple(dataset.classes)
