"""FashionMNISTWithMasks on tiny IDX files written by the test (never the real data)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import FashionMNIST
from torchvision.transforms.functional import pil_to_tensor

from captum_regularized.datasets import FashionMNISTWithMasks, SyntheticShapes
from captum_regularized.models import SimpleCNN, train_classifier

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
COUNTS = {"train": 12, "test": 5}


def idx_bytes(values: torch.Tensor) -> bytes:
    """An IDX file of unsigned bytes, written from the format's description."""
    header = struct.pack(">I", 0x0800 + values.dim())
    header += b"".join(struct.pack(">I", n) for n in values.shape)
    return header + values.to(torch.uint8).contiguous().numpy().tobytes()


def make_data(seed: int = 0, size: int = 28) -> dict[str, bytes]:
    """The four files' uncompressed bytes and, under ``"_tensors"``, what they hold."""
    generator = torch.Generator().manual_seed(seed)
    files: dict[str, bytes] = {}
    for split, (images_name, labels_name) in NAMES.items():
        count = COUNTS[split]
        images = torch.randint(0, 256, (count, size, size), generator=generator)
        images[:, :3] = 0  # some background, plus values near the threshold
        images[:, 3, :12] = torch.arange(12)
        labels = torch.arange(count) % 10
        files[images_name], files[labels_name] = idx_bytes(images), idx_bytes(labels)
        files[f"_{split}"] = images.to(torch.uint8).numpy().tobytes()
    return files


def raw_images(split: str, size: int = 28, seed: int = 0) -> torch.Tensor:
    data = make_data(seed, size)[f"_{split}"]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, size, size)


def write(folder: Path, files: dict[str, bytes], gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.startswith("_"):
            continue
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as file:
                file.write(content)
        else:
            (folder / name).write_bytes(content)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def flat_root(tmp_path):
    """The four .gz files directly in a folder, as Debian's package installs them."""
    root = tmp_path / "debian"
    write(root, make_data())
    return root


@pytest.fixture
def torchvision_root(tmp_path):
    """Torchvision's own layout: uncompressed files in ``root/FashionMNIST/raw``."""
    root = tmp_path / "tv"
    write(root / "FashionMNIST" / "raw", make_data(), gz=False)
    return root


def test_torchvision_layout_items_match_the_bytes(torchvision_root, tmp_path):
    before = snapshot(torchvision_root)
    cache = tmp_path / "cache"
    for split, train in (("train", True), ("test", False)):
        data = FashionMNISTWithMasks(torchvision_root, train=train, cache_dir=cache)
        assert len(data) == COUNTS[split] and isinstance(data.source, FashionMNIST)
        raw = raw_images(split)
        image, label, mask = data[2]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert torch.equal(image[0] * 255, raw[2].float())  # the bytes, exactly
        assert label.dtype == torch.long and label.shape == () and int(label) == 2
        assert mask.shape == (1, 28, 28) and mask.dtype == torch.bool
    assert snapshot(torchvision_root) == before and not cache.exists()  # no cache needed


def test_items_have_the_form_of_synthetic_shapes(flat_root, tmp_path):
    data = FashionMNISTWithMasks(flat_root, image_size=32, channels=3, cache_dir=tmp_path / "c")
    ours, theirs = data[0], SyntheticShapes(num_samples=2, image_size=32)[0]
    for mine, reference in zip(ours, theirs):
        assert mine.shape == reference.shape and mine.dtype == reference.dtype
    assert data.classes == data.shape_names == tuple(FashionMNIST.classes)
    assert data.classes[9] == "Ankle boot" and data.num_classes == 10
    assert float(ours[0].min()) >= 0.0 and float(ours[0].max()) <= 1.0


def test_flat_gz_files_are_unpacked_into_the_cache_never_into_root(flat_root, tmp_path):
    before = snapshot(flat_root)
    cache = tmp_path / "cache"
    data = FashionMNISTWithMasks(flat_root, train=False, cache_dir=cache)
    assert snapshot(flat_root) == before
    raws = list(cache.glob("fashion_mnist/*/FashionMNIST/raw/*-idx?-ubyte"))
    assert sorted(p.name for p in raws) == sorted(n for pair in NAMES.values() for n in pair)
    images, labels, _ = data.tensors()
    assert torch.equal(images[:, 0] * 255, raw_images("test").float())
    assert labels.tolist() == [0, 1, 2, 3, 4]
    # a second data set reuses the unpacked files; changed sources are unpacked again
    stamps = snapshot(cache)
    FashionMNISTWithMasks(flat_root, train=True, cache_dir=cache)
    assert snapshot(cache) == stamps
    write(flat_root, make_data(seed=1))
    fresh = FashionMNISTWithMasks(flat_root, train=False, cache_dir=cache)
    assert torch.equal(fresh.tensors()[0][:, 0] * 255, raw_images("test", seed=1).float())


def test_plain_files_directly_in_root_and_the_default_cache(tmp_path, monkeypatch):
    root = tmp_path / "plain"
    write(root, make_data(), gz=False)
    before = snapshot(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = FashionMNISTWithMasks(root)
    assert torch.equal(data[5][0][0] * 255, raw_images("train")[5].float())
    assert snapshot(root) == before
    assert list((tmp_path / "xdg" / "captum_regularized" / "fashion_mnist").iterdir())


@pytest.mark.parametrize("threshold, level", [(None, 5), (0.3, 76), (0.0, 0)])
def test_masks_are_the_pixels_above_the_threshold(flat_root, tmp_path, threshold, level):
    """``level``: the largest byte at or below the threshold (0.02 * 255 = 5.1)."""
    extra = {} if threshold is None else {"mask_threshold": threshold}
    data = FashionMNISTWithMasks(flat_root, cache_dir=tmp_path / "c", **extra)
    _, _, masks = data.tensors()
    assert torch.equal(masks[:, 0], raw_images("train") > level)
    assert not masks[:, 0, :3].any() and masks[:, 0, 3, :12].sum() == 12 * max(0, 11 - level)


def test_three_channels_repeat_the_grey_one(flat_root, tmp_path):
    one = FashionMNISTWithMasks(flat_root, cache_dir=tmp_path / "c")
    three = FashionMNISTWithMasks(flat_root, channels=3, cache_dir=tmp_path / "c")
    image, _, mask = three[4]
    assert image.shape == (3, 28, 28)
    assert all(torch.equal(image[c], one[4][0][0]) for c in range(3))
    assert torch.equal(mask, one[4][2])


def reference_upsampling(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear with half-pixel centres and clamped borders, one axis at a time."""

    def along(values: torch.Tensor, axis: int) -> torch.Tensor:
        source = values.shape[axis]
        out = []
        for i in range(size):
            x = min(max((i + 0.5) * source / size - 0.5, 0.0), source - 1)
            low = int(x)
            high = min(low + 1, source - 1)
            w = x - low
            a, b = values.select(axis, low), values.select(axis, high)
            out.append((1 - w) * a + w * b)
        return torch.stack(out, axis)

    return along(along(image, 0), 1)


def test_upsampling_is_bilinear_and_the_mask_follows_the_resized_image(flat_root, tmp_path):
    data = FashionMNISTWithMasks(flat_root, image_size=64, cache_dir=tmp_path / "c")
    image, _, mask = data[3]
    expected = reference_upsampling(raw_images("train")[3].double() / 255, 64)
    assert image.shape == (1, 64, 64)
    torch.testing.assert_close(image[0].double(), expected, atol=1e-6, rtol=0)
    assert torch.equal(mask, image > data.mask_threshold)


def test_downsampling_is_antialiased_like_pil(flat_root, tmp_path):
    data = FashionMNISTWithMasks(flat_root, image_size=12, cache_dir=tmp_path / "c")
    images, _, masks = data.tensors()
    for k, raw in enumerate(raw_images("train")):
        picture = Image.fromarray(raw.numpy(), mode="L").resize((12, 12), Image.BILINEAR)
        pil = pil_to_tensor(picture)[0].float() / 255
        assert float((images[k, 0] - pil).abs().max()) <= 1.01 / 255  # PIL rounds to bytes
    assert torch.equal(masks, images > data.mask_threshold)


def test_render_tensors_and_materialize_agree_with_items(flat_root, tmp_path):
    data = FashionMNISTWithMasks(flat_root, image_size=20, channels=3, cache_dir=tmp_path / "c")
    images, labels, masks = data.tensors(chunk_size=5)
    assert images.shape == (12, 3, 20, 20) and masks.shape == (12, 1, 20, 20)
    for i in (0, 7, 11):
        item = data[i]
        assert all(torch.equal(a, b) for a, b in zip(item, (images[i], labels[i], masks[i])))
    assert all(torch.equal(a, b) for a, b in zip(data[-1], data[11]))
    fast = data.materialize()
    assert len(fast) == 12 and all(torch.equal(a, b) for a, b in zip(fast[7], data[7]))
    with pytest.raises(IndexError):
        data[12]


def test_items_feed_a_dataloader_and_train_classifier(flat_root, tmp_path):
    data = FashionMNISTWithMasks(flat_root, image_size=16, cache_dir=tmp_path / "c")
    images, labels, masks = next(iter(DataLoader(data, batch_size=4)))
    assert images.shape == (4, 1, 16, 16) and labels.tolist() == [0, 1, 2, 3]
    assert masks.shape == (4, 1, 16, 16) and masks.dtype == torch.bool
    for train_set in (data, data.materialize()):
        history = train_classifier(
            SimpleCNN(data.num_classes, in_channels=1, width=2, batch_norm=False), train_set,
            epochs=1, batch_size=12, progress=False,
        )
        assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))


def test_download_is_passed_to_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # stands in for the network: write torchvision's layout
        calls.append(self.root)
        write(Path(self.raw_folder), make_data(), gz=False)

    monkeypatch.setattr(FashionMNIST, "download", fake_download)
    root = tmp_path / "fetched"
    data = FashionMNISTWithMasks(root, train=False, download=True, cache_dir=tmp_path / "c")
    assert calls and Path(calls[0]) == root
    assert torch.equal(data[0][0][0] * 255, raw_images("test")[0].float())
    assert not (tmp_path / "c").exists()
    FashionMNISTWithMasks(root, download=True)  # present now: no second download
    assert len(calls) == 1


def test_missing_files_name_what_is_missing(flat_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*download=True"):
        FashionMNISTWithMasks(tmp_path / "nowhere")
    (flat_root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz.*download=True"):
        FashionMNISTWithMasks(flat_root, cache_dir=tmp_path / "c")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="root must be a folder"):
        FashionMNISTWithMasks(tmp_path / "afile")


def corrupt(flat_root: Path, name: str, content: bytes, gz: bool = True) -> Path:
    path = flat_root / f"{name}.gz"
    if gz:
        with gzip.open(path, "wb") as file:
            file.write(content)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "name, change, gz, message",
    [
        ("train-images-idx3-ubyte", lambda b: b[:-10], True, "truncated"),
        ("train-labels-idx1-ubyte", lambda b: b[:6], True, "too short"),
        ("t10k-images-idx3-ubyte", lambda b: b"\x00\x00\x09\x03" + b[4:], True, "magic number"),
        ("train-labels-idx1-ubyte", lambda b: idx_bytes(torch.zeros(2, 2)), True, "magic"),
        ("train-images-idx3-ubyte", lambda b: b"not gzip at all", False, "not a readable gzip"),
        ("train-labels-idx1-ubyte", lambda b: gzip.compress(b)[:-12], False, "gzip"),
    ],
)
def test_bad_files_give_errors_naming_the_file(flat_root, tmp_path, name, change, gz, message):
    path = corrupt(flat_root, name, change(make_data()[name]), gz)
    with pytest.raises(ValueError, match=message) as info:
        FashionMNISTWithMasks(flat_root, cache_dir=tmp_path / "c")
    assert str(path) in str(info.value)
    path.unlink()  # mend it: the next load must not trust the half-made cache
    write(flat_root, make_data())
    assert len(FashionMNISTWithMasks(flat_root, cache_dir=tmp_path / "c")) == 12


def test_bad_files_in_torchvision_layout_and_inconsistent_files(torchvision_root, tmp_path):
    raw = torchvision_root / "FashionMNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated") as info:
        FashionMNISTWithMasks(torchvision_root)
    assert str(images) in str(info.value)
    write(raw, make_data(), gz=False)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(torch.arange(4)))
    with pytest.raises(ValueError, match=r"5 images but .* 4 labels"):
        FashionMNISTWithMasks(torchvision_root, train=False)
    labels.write_bytes(idx_bytes(torch.tensor([0, 1, 10, 2, 3])))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte holds label 10"):
        FashionMNISTWithMasks(torchvision_root, train=False)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"image_size": 0}, ValueError, "image_size"),
        ({"image_size": 28.0}, TypeError, "image_size"),
        ({"channels": 2}, ValueError, "channels"),
        ({"channels": True}, TypeError, "channels"),
        ({"mask_threshold": 1.0}, ValueError, "mask_threshold"),
        ({"mask_threshold": "0.1"}, TypeError, "mask_threshold"),
        ({"train": "yes"}, TypeError, "train"),
        ({"download": 1}, TypeError, "download"),
        ({"cache_dir": 3}, TypeError, "cache_dir"),
    ],
)
def test_bad_arguments_name_the_argument(flat_root, kwargs, error, name):
    with pytest.raises(error, match=name):
        FashionMNISTWithMasks(flat_root, **kwargs)
