"""Issue 12, data loading, training helpers, dataset evaluation and the command line.

Gaps 5, 11, 13 and 14: the package's own data set, training and evaluation helpers
work together; models with tuple/dict outputs or without parameters get clear
answers; a refused ``--device cuda`` leaves no folder behind; unreadable, 16-bit
and badly sized images are handled at the right place with the argument named.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized.cli import main
from captum_regularized.datasets import ImageFolderWithMasks
from captum_regularized.metrics import evaluate_dataset
from captum_regularized.models import (
    SimpleCNN,
    evaluate_accuracy,
    train_classifier,
    with_cross_entropy,
)
from tests.model_checks import untouched

NO_CUDA = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks what happens on a machine without CUDA"
)


def _write_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (8, 6)) -> Path:
    """Two classes of small random RGB PNGs (width, height = ``size``)."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


class _TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = SimpleCNN(2, width=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.detach()


class _DictModel(_TupleModel):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"scores": self.net(x)}  # no "logits" key: refused


class _ChannelMeans(nn.Module):
    """A parameter-free classifier: class ``c`` scores the mean of channel ``c``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


# --- gap 5: ImageFolderWithMasks without masks feeds train_classifier / evaluate_accuracy


def test_gap_5_image_folder_without_masks_trains_and_evaluates(tmp_path):
    data = ImageFolderWithMasks(_write_folder(tmp_path / "images"), image_size=8)
    assert data[0][2] is None
    model = SimpleCNN(2, width=2)
    history = train_classifier(model, data, epochs=1, batch_size=4, progress=False)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    accuracy = evaluate_accuracy(model, data, batch_size=4)
    # reference: every item through the model one by one
    model.eval()
    with torch.no_grad():
        hits = [int(model(image[None]).argmax(1)) == int(label) for image, label, _ in data]
    assert accuracy == pytest.approx(sum(hits) / len(hits))


def test_gap_5_collate_fn_is_used(tmp_path):
    data = ImageFolderWithMasks(_write_folder(tmp_path / "images"), image_size=8)
    calls = []

    def collate(items):
        calls.append(len(items))
        return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])

    model = SimpleCNN(2, width=2)
    train_classifier(model, data, epochs=1, batch_size=4, progress=False, collate_fn=collate)
    assert calls == [4, 2]
    evaluate_accuracy(model, data, batch_size=5, collate_fn=collate)
    assert calls == [4, 2, 5, 1]


def test_gap_5_items_with_int_labels_and_no_masks_collate(tmp_path):
    items = [(torch.rand(3, 4, 4), k % 2, None) for k in range(4)]
    model = SimpleCNN(2, width=2)
    history = train_classifier(model, items, epochs=1, batch_size=2, progress=False)
    assert len(history) == 1
    assert 0.0 <= evaluate_accuracy(model, items, batch_size=3) <= 1.0


# --- gap 11: tuple/dict outputs are a clear TypeError; parameter-free models work


@pytest.mark.parametrize("model_class", [_TupleModel, _DictModel])
def test_gap_11_evaluate_dataset_non_tensor_output_is_a_type_error(model_class):
    model = model_class().eval()
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    loader = DataLoader(TensorDataset(images, labels), batch_size=2)
    name = "tuple" if model_class is _TupleModel else "dict"
    with untouched(model, images), pytest.raises(TypeError, match=r"\(batch, classes\) tensor"):
        evaluate_dataset(model, loader, None, ["gradient_alignment"], progress=False)
    # with label targets the model is first called inside the deletion metric
    method = Saliency(lambda x: model.net(x))
    with untouched(model, images), pytest.raises(TypeError, match=name):
        evaluate_dataset(model, loader, method, ["deletion_auc"], target="label", progress=False)


@pytest.mark.parametrize("model_class", [_TupleModel, _DictModel])
def test_gap_11_evaluate_accuracy_non_tensor_output_is_a_type_error(model_class):
    model = model_class().train()
    images = torch.rand(4, 3, 8, 8)
    data = TensorDataset(images, torch.zeros(4, dtype=torch.long))
    with untouched(model, images), pytest.raises(TypeError, match=r"\(batch, classes\) tensor"):
        evaluate_accuracy(model, data)


def test_gap_11_evaluate_accuracy_wrong_rank_output_is_a_value_error():
    model = nn.Flatten(0)  # (B, C, H, W) -> one long vector
    data = TensorDataset(torch.rand(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        evaluate_accuracy(model, data)


def test_gap_11_evaluate_accuracy_on_a_parameter_free_model():
    images = torch.rand(10, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    expected = float((images.mean(dim=(2, 3)).argmax(1) == labels).float().mean())
    assert evaluate_accuracy(_ChannelMeans(), TensorDataset(images, labels), batch_size=3) == (
        pytest.approx(expected)
    )


def test_gap_11_train_classifier_non_tensor_output_is_a_type_error():
    model = _TupleModel().eval()
    data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"\(batch, classes\) tensor"):
        train_classifier(model, data, epochs=1, batch_size=2, progress=False)
    assert not model.training  # the mode it had, though the first batch failed


# --- gap 13: a refused --device cuda leaves no --out folder behind


@NO_CUDA
@pytest.mark.parametrize("command", ["demo", "reproduce"])
def test_gap_13_cuda_without_gpu_creates_no_folder(tmp_path, capsys, command):
    out = tmp_path / "new" / "deeper"
    assert main([command, "--quick", "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@NO_CUDA
@pytest.mark.parametrize("command", ["demo", "reproduce"])
def test_gap_13_cuda_without_gpu_keeps_an_existing_folder(tmp_path, command):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    empty = tmp_path / "empty-existing"
    empty.mkdir()
    assert main([command, "--quick", "--device", "cuda", "--out", str(out)]) == 2
    assert main([command, "--quick", "--device", "cuda", "--out", str(empty)]) == 2
    assert (out / "keep.txt").read_text() == "mine" and sorted(out.iterdir()) == [out / "keep.txt"]
    assert empty.is_dir()


def test_gap_13_refused_data_folder_leaves_no_new_folder(tmp_path, capsys):
    (tmp_path / "one-class" / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one-class" / "only" / "a.png")
    out = tmp_path / "out"
    argv = ["reproduce", "--quick", "--no-progress", "--data", str(tmp_path / "one-class"),
            "--out", str(out)]
    assert main(argv) == 2
    assert "--data" in capsys.readouterr().err
    assert not out.exists()


# --- gap 14: truncated files, 16-bit PNGs, image_size, empty training sets


def test_gap_14_truncated_image_error_names_the_path(tmp_path):
    root = _write_folder(tmp_path / "images", per_class=1, size=(32, 32))
    path = root / "cat" / "0.png"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    data = ImageFolderWithMasks(root)
    with pytest.raises(OSError, match=r"0\.png") as error:
        data[0]
    assert str(path) in str(error.value)


def _save_16bit(values: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(values.astype(np.uint16))
    assert picture.mode.startswith("I;16")
    picture.save(path)


def test_gap_14_16bit_png_is_scaled_to_unit_range(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    values = np.arange(20, dtype=np.int64).reshape(4, 5) * 3449  # 0 .. 65531
    _save_16bit(values, tmp_path / "a" / "x.png")
    _save_16bit(values[::-1], tmp_path / "b" / "x.png")
    image, label, _ = ImageFolderWithMasks(tmp_path)[0]
    expected = torch.from_numpy(values / 65535.0).float().expand(3, -1, -1)
    assert image.dtype == torch.float32 and image.shape == (3, 4, 5) and int(label) == 0
    torch.testing.assert_close(image, expected)


def test_gap_14_16bit_png_resized_matches_the_8bit_image(tmp_path):
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (6, 9), dtype=np.int64)
    for name, values in (("eight", eight), ("sixteen", eight * 257)):
        (tmp_path / name).mkdir()
        if name == "eight":
            Image.fromarray(values.astype(np.uint8), mode="L").save(tmp_path / name / "x.png")
        else:
            _save_16bit(values, tmp_path / name / "x.png")
    data = ImageFolderWithMasks(tmp_path, image_size=(4, 5))
    (from_eight, _, _), (from_sixteen, _, _) = data[0], data[1]
    assert from_sixteen.shape == (3, 4, 5)
    # the same picture at two bit depths; only the 8-bit rounding may differ
    torch.testing.assert_close(from_sixteen, from_eight, atol=1.01 / 255, rtol=0)
    assert from_sixteen.max() < 1.0


def test_gap_14_16bit_mask_is_thresholded_at_half_range(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 1)).save(tmp_path / "images" / "a" / "x.png")
    _save_16bit(np.array([[0, 20000, 40000, 65535]]), tmp_path / "masks" / "a" / "x.png")
    _, _, mask = ImageFolderWithMasks(tmp_path / "images", mask_root=tmp_path / "masks")[0]
    assert mask.tolist() == [[[False, False, True, True]]]


@pytest.mark.parametrize(
    "image_size, error",
    [((8,), ValueError), ((8, 8, 8), ValueError), ((8, 0), ValueError), (-2, ValueError),
     ("8", TypeError), (8.0, TypeError), (True, TypeError), ((8, 2.5), TypeError)],
)
def test_gap_14_image_size_is_checked_in_the_constructor(tmp_path, image_size, error):
    root = _write_folder(tmp_path / "images", per_class=1)
    with pytest.raises(error, match="image_size"):
        ImageFolderWithMasks(root, image_size=image_size)


def test_gap_14_image_size_accepts_ints_and_pairs(tmp_path):
    root = _write_folder(tmp_path / "images", per_class=1)
    assert ImageFolderWithMasks(root, image_size=[3, 5])[0][0].shape == (3, 3, 5)
    assert ImageFolderWithMasks(root, image_size=np.int64(4))[0][0].shape == (3, 4, 4)


def test_gap_14_empty_train_set_is_a_value_error_before_any_work():
    model = SimpleCNN(2, width=2).eval()
    empty = TensorDataset(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    with untouched(model), pytest.raises(ValueError, match="train_set"):
        train_classifier(model, empty, epochs=1, progress=False)


def test_gap_14_loss_hook_contract_is_unchanged():
    """The regularizers' hook gets (images, labels); its pair means cross-entropy + penalty.

    The pair is now passed through ``with_cross_entropy``; a hook returning it directly
    still trains the same way for one release, with a ``DeprecationWarning``.
    """
    data = TensorDataset(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0, 1]))
    model = SimpleCNN(2, width=2, batch_norm=False)  # train and eval forwards agree
    seen = []

    def hook(images, labels):
        seen.append((images.shape, labels.tolist()))
        logits = model(images)
        return logits, torch.tensor(0.5)

    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(data.tensors[0]), data.tensors[1]) + 0.5
    for loss, warns in ((with_cross_entropy(hook), False), (hook, True)):
        seen.clear()
        deprecated = pytest.warns(DeprecationWarning, match="with_cross_entropy")
        with deprecated if warns else contextlib.nullcontext():
            history = train_classifier(model, data, epochs=1, batch_size=3, progress=False,
                                       loss=loss, lr=1e-12)
        assert [shape for shape, _ in seen] == [(3, 3, 8, 8)] * 2
        assert sorted(label for _, labels in seen for label in labels) == [0, 0, 0, 1, 1, 1]
        # lr ~ 0: the mean loss is cross-entropy of the (unchanged) model plus the penalty
        assert history[0]["loss"] == pytest.approx(float(expected), rel=1e-4)
