"""Contract: every data set helper yields ``(image, label, mask-or-None)`` items of the
documented form, collates with :func:`collate_with_optional_masks`, feeds the package's
own training and evaluation helpers, and names a bad constructor argument."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from captum_regularized import datasets, models

SIZE = 32


def _image_folder(root: Path, *, masks: bool) -> datasets.ImageFolderWithMasks:
    gen = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        for index in range(3):
            pixels = (torch.rand(SIZE, SIZE, 3, generator=gen) * 255).to(torch.uint8).numpy()
            (root / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / label / f"{index}.png")
            if masks:
                (root / "masks" / label).mkdir(parents=True, exist_ok=True)
                mask = (pixels[..., 0] > 127).astype("uint8") * 255
                Image.fromarray(mask).save(root / "masks" / label / f"{index}.png")
    return datasets.ImageFolderWithMasks(
        root / "images", mask_root=(root / "masks") if masks else None, image_size=SIZE
    )


def _fashion_mnist(root: Path) -> datasets.FashionMNISTWithMasks:
    from tests.datasets.test_fashion_mnist import make_data, write

    write(root / "fashion", make_data())  # the four .gz files, as Debian installs them
    return datasets.FashionMNISTWithMasks(
        root / "fashion", image_size=SIZE, channels=3, cache_dir=root / "cache"
    )


DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "SyntheticShapes": lambda tmp: datasets.SyntheticShapes(num_samples=6, image_size=SIZE),
    "SyntheticShapes.materialize": lambda tmp: datasets.SyntheticShapes(
        num_samples=6, image_size=SIZE
    ).materialize(),
    "ImageFolderWithMasks": lambda tmp: _image_folder(tmp, masks=True),
    "ImageFolderWithMasks-no-masks": lambda tmp: _image_folder(tmp, masks=False),
    "FashionMNISTWithMasks": _fashion_mnist,
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_items_have_the_documented_form(name: str, tmp_path: Path):
    data = DATASETS[name](tmp_path)
    assert len(data) >= 6
    for index in (0, len(data) - 1):
        image, label, mask = data[index]
        assert image.dtype == torch.float32 and image.dim() == 3
        assert image.shape[1:] == (SIZE, SIZE)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert int(label) == label and int(label) >= 0
        if mask is not None:
            assert mask.dtype == torch.bool and mask.shape == (1, SIZE, SIZE)
    again = DATASETS[name](tmp_path)[0]
    assert torch.equal(again[0], data[0][0]), "items must be deterministic"


@pytest.mark.parametrize("name", list(DATASETS))
def test_the_packages_own_helpers_take_it(name: str, tmp_path: Path):
    data = DATASETS[name](tmp_path)
    images, labels, masks = next(iter(DataLoader(
        data, batch_size=3, collate_fn=datasets.collate_with_optional_masks
    )))
    assert images.shape[0] == labels.shape[0] == 3
    assert masks is None or masks.shape == (3, 1, SIZE, SIZE)
    torch.manual_seed(0)
    model = models.SimpleCNN(num_classes=12, width=2)
    history = models.train_classifier(model, data, epochs=1, batch_size=3, progress=False)
    assert len(history) == 1
    accuracy = models.evaluate_accuracy(model, data, batch_size=4)
    assert 0.0 <= accuracy <= 1.0


BAD_ARGUMENTS = {
    "num_samples": (lambda tmp: datasets.SyntheticShapes(num_samples=0), ValueError),
    "image_size": (lambda tmp: datasets.SyntheticShapes(image_size=2), ValueError),
    "noise": (lambda tmp: datasets.SyntheticShapes(noise=float("nan")), ValueError),
    "seed": (lambda tmp: datasets.SyntheticShapes(seed=-1), ValueError),
    "root": (lambda tmp: datasets.ImageFolderWithMasks(tmp / "missing"), ValueError),
    "channels": (lambda tmp: datasets.FashionMNISTWithMasks(tmp, channels=2), ValueError),
    "image_size ": (
        lambda tmp: datasets.ImageFolderWithMasks(_image_folder(tmp, masks=False).root,
                                                  image_size=(8,)),
        ValueError,
    ),
}


@pytest.mark.parametrize("argument", list(BAD_ARGUMENTS))
def test_bad_arguments_are_named(argument: str, tmp_path: Path):
    make, error = BAD_ARGUMENTS[argument]
    with pytest.raises(error, match=argument.strip()):
        make(tmp_path)


def test_collate_refuses_mixed_masks():
    item = (torch.zeros(3, 2, 2), torch.tensor(0))
    with pytest.raises(ValueError, match="mask"):
        datasets.collate_with_optional_masks([(*item, None), (*item, torch.ones(1, 2, 2) > 0)])
