"""ImageFolderWithMasks on a tiny folder of PNGs written by the test."""

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from captum_regularized.datasets import ImageFolderWithMasks, collate_with_optional_masks


@pytest.fixture
def folder(tmp_path):
    """Two classes, two 10x8 images each; masks are the left half (cat) or top rows (dog)."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    colours = {"cat": (200, 10, 10), "dog": (10, 10, 200)}
    for name, colour in colours.items():
        (images / name).mkdir(parents=True)
        (masks / name).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (10, 8), colour).save(images / name / f"{k}.png")
            mask = Image.new("L", (10, 8), 0)
            box = (0, 0, 5, 8) if name == "cat" else (0, 0, 10, 3)
            mask.paste(255, box)
            mask.save(masks / name / f"{k}.png")
    return images, masks


def test_items_have_the_synthetic_form(folder):
    images, masks = folder
    data = ImageFolderWithMasks(images, mask_root=masks)
    assert len(data) == 4 and data.classes == ["cat", "dog"]
    image, label, mask = data[0]
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 10, 10]) / 255.0)
    assert int(label) == 0 and label.dtype == torch.long
    expected = torch.zeros(1, 8, 10, dtype=torch.bool)
    expected[..., :5] = True
    assert torch.equal(mask, expected)
    _, label, mask = data[3]
    assert int(label) == 1 and int(mask.sum()) == 3 * 10 and mask[0, :3].all()


def test_resizing_keeps_images_and_masks_aligned(folder):
    images, masks = folder
    image, _, mask = ImageFolderWithMasks(images, mask_root=masks, image_size=(4, 6))[1]
    assert image.shape == (3, 4, 6) and mask.shape == (1, 4, 6)
    assert mask[..., :3].all() and not mask[..., 3:].any()


def test_missing_masks_are_none_and_collate(folder):
    images, masks = folder
    (masks / "dog" / "1.png").unlink()
    data = ImageFolderWithMasks(images, mask_root=masks)
    assert data[3][2] is None and data[2][2] is not None
    loader = DataLoader(data, batch_size=2, collate_fn=collate_with_optional_masks)
    first = next(iter(loader))
    assert first[0].shape == (2, 3, 8, 10) and first[2].shape == (2, 1, 8, 10)
    assert first[1].tolist() == [0, 0]
    with pytest.raises(ValueError, match="no mask"):
        collate_with_optional_masks([data[2], data[3]])
    no_masks = ImageFolderWithMasks(images)
    _, labels, none = collate_with_optional_masks([no_masks[0], no_masks[3]])
    assert none is None and labels.tolist() == [0, 1]


def test_transform_is_applied(folder):
    images, _ = folder
    image, _, _ = ImageFolderWithMasks(images, transform=lambda x: 1.0 - x)[0]
    assert torch.allclose(image[:, 0, 0], 1.0 - torch.tensor([200, 10, 10]) / 255.0)


def test_bad_folders_are_clear_errors(tmp_path, folder):
    with pytest.raises(ValueError, match="root"):
        ImageFolderWithMasks(tmp_path / "absent")
    with pytest.raises(ValueError, match="mask_root"):
        ImageFolderWithMasks(folder[0], mask_root=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="root"):
        ImageFolderWithMasks(tmp_path / "empty")
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderWithMasks(folder[0], image_size=0)


def test_mask_of_another_size_is_a_clear_error(folder):
    images, masks = folder
    Image.new("L", (3, 3), 255).save(masks / "cat" / "0.png")
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderWithMasks(images, mask_root=masks)[0]
