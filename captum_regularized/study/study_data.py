"""The data of one seed: a training set and a held-out set (with masks when known)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from captum_regularized.datasets import FashionMNISTWithMasks, ImageFolderWithMasks, SyntheticShapes
from captum_regularized.datasets.fashion_mnist import fashion_mnist_missing
from captum_regularized.study.settings import StudySettings

__all__ = ["DATA_SETS", "DEFAULT_FASHION_MNIST_ROOT", "TEST_SEED_OFFSET", "SeedData", "StudyData"]

TEST_SEED_OFFSET = 1_000_003
"""The held-out set of seed ``s`` uses data seed ``s + TEST_SEED_OFFSET``."""

DATA_SETS = ("synthetic", "fashion-mnist")
"""The named data sources of the study (an image folder is the third kind)."""

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""


@dataclass(frozen=True)
class SeedData:
    """Training set and held-out tensors of one seed."""

    train_set: Dataset
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor | None


class StudyData:
    """Where the study's images come from, and each seed's train/held-out split.

    Parameters
    ----------
    settings : StudySettings
        Sizes; images have 3 channels.
    source : {"synthetic", "fashion-mnist"} or Path, optional
        ``"synthetic"`` (also ``None``), ``"fashion-mnist"`` or an ``ImageFolder`` layout
        (no masks); how each is drawn per seed: :doc:`/design_notes/data_and_study`.
    root : Path, optional
        The Fashion-MNIST folder (default :data:`DEFAULT_FASHION_MNIST_ROOT`).

    Raises
    ------
    ValueError
        Starting with ``--data``: a bad folder, bad Fashion-MNIST files or source name.

    Examples
    --------
    >>> from captum_regularized.study.settings import TINY
    >>> data = StudyData(TINY)
    >>> seed_data = data.for_seed(0)
    >>> data.key, len(seed_data.train_set), tuple(seed_data.test_masks.shape)
    ('synthetic', 96, (32, 1, 32, 32))
    """

    def __init__(
        self, settings: StudySettings, source: str | Path | None = None, *,
        root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.image_size = (
            settings.fashion_mnist_size if source == "fashion-mnist" else settings.image_size
        )
        self._cache: dict[int, SeedData] = {}
        self.folder: Path | None = None
        self.root = DEFAULT_FASHION_MNIST_ROOT if root is None else Path(root)
        if source is None or source == "synthetic":
            self.key = "synthetic"
            self.class_names = SyntheticShapes(1, num_classes=settings.num_classes).shape_names
        elif source == "fashion-mnist":
            self.key = "fashion-mnist"
            self._fashion = self._open_fashion_mnist()
            self.class_names = self._fashion[0].classes
        elif isinstance(source, Path):
            self.key = "folder"
            self.folder = source
            self._folder_tensors = _load_folder(source, settings.image_size)
            self.class_names = self._folder_tensors[2]
        else:
            raise ValueError(
                f"--data must be one of {list(DATA_SETS)} or an image folder, got {source!r}"
            )

    def _open_fashion_mnist(self) -> tuple[FashionMNISTWithMasks, FashionMNISTWithMasks]:
        missing = fashion_mnist_missing(self.root)
        if missing:
            raise ValueError(f"--data fashion-mnist: {missing} (pass --data-root DIR)")
        try:
            return tuple(  # type: ignore[return-value]
                FashionMNISTWithMasks(self.root, train=train, image_size=self.image_size,
                                      channels=3)
                for train in (True, False)
            )
        except (ValueError, OSError) as error:  # damaged files: the loader names the file
            raise ValueError(f"--data fashion-mnist: {error}") from None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        """Whether ground-truth masks exist (synthetic data and Fashion-MNIST)."""
        return self.key != "folder"

    @property
    def label(self) -> str:
        """The data set's name in the report's columns."""
        names = {"synthetic": "SyntheticShapes", "fashion-mnist": "Fashion-MNIST"}
        return names.get(self.key, "image folder")

    @property
    def source(self) -> str:
        """A short description for the report."""
        s = self.settings
        if self.key == "synthetic":
            config = SyntheticShapes.configured(s.synthetic_configuration, 1)
            return (f"SyntheticShapes, {s.synthetic_configuration} configuration ({s.image_size} "
                    f"px, {s.num_classes} classes, {config.num_distractors} distractors, radius "
                    f"{config.radius_range[0]:g}-{config.radius_range[1]:g} of the side, "
                    f"clutter {config.clutter:g}, noise {config.noise:g})")
        if self.key == "fashion-mnist":
            return (f"Fashion-MNIST from {self.root} ({self.num_classes} classes, resized to "
                    f"{self.image_size} px, 3 channels; masks: garment silhouettes)")
        return f"image folder {self.folder} ({self.num_classes} classes, {self.image_size} px)"

    def for_seed(self, seed: int) -> SeedData:
        """The (cached) data of ``seed``."""
        if seed not in self._cache:
            build = {"synthetic": self._synthetic, "fashion-mnist": self._fashion_mnist}
            self._cache[seed] = build.get(self.key, self._split)(seed)
        return self._cache[seed]

    def _synthetic(self, seed: int) -> SeedData:
        s = self.settings

        def shapes(count: int, data_seed: int) -> SyntheticShapes:
            return SyntheticShapes.configured(
                s.synthetic_configuration, count, seed=data_seed, image_size=s.image_size,
                num_classes=s.num_classes,
            )

        train_set = shapes(s.synthetic_train_samples, seed).materialize()
        images, labels, masks = shapes(s.test_samples, seed + TEST_SEED_OFFSET).tensors()
        return SeedData(train_set, images, labels, masks)

    def _fashion_mnist(self, seed: int) -> SeedData:
        train, test = self._fashion
        s = self.settings

        def draw(data: FashionMNISTWithMasks, count: int, data_seed: int) -> torch.Tensor:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(data_seed))
            return order[: min(count, len(data))]

        train_set = TensorDataset(*train.render(draw(train, s.train_samples, seed)))
        images, labels, masks = test.render(draw(test, s.test_samples, seed + TEST_SEED_OFFSET))
        return SeedData(train_set, images, labels, masks)

    def _split(self, seed: int) -> SeedData:
        images, labels, _ = self._folder_tensors
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        test_count = min(self.settings.test_samples, max(1, len(labels) // 5))
        test, train = order[:test_count], order[test_count:]
        if len(train) == 0:
            raise ValueError(f"--data {self.folder}: too few images for a train/test split")
        train_set = TensorDataset(images[train], labels[train])
        return SeedData(train_set, images[test], labels[test], None)


def _load_folder(
    folder: Path, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All images of an ``ImageFolder`` as ``(N, 3, S, S)`` floats in [0, 1], labels, names."""
    try:
        dataset = ImageFolderWithMasks(folder, image_size=image_size)
    except ValueError as error:
        raise ValueError(f"--data {folder}: not an image folder ({error})") from None
    if len(dataset.classes) < 2:
        raise ValueError(f"--data {folder}: needs at least two class sub-folders")
    try:
        items = [dataset[i] for i in range(len(dataset))]
    except OSError as error:
        raise ValueError(f"--data {folder}: {error}") from None
    images = torch.stack([image for image, _, _ in items])
    labels = torch.stack([label for _, label, _ in items])
    return images, labels, tuple(dataset.classes)
