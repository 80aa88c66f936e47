"""``captum-regularized reproduce`` when something goes wrong, and what it prints.

- an image folder whose training split ends in a batch of one image trains (BatchNorm
  cannot normalise a batch of one: such a last batch is dropped);
- a study that fails half-way leaves no output behind (everything is written into a
  staging folder and moved into ``--out`` at the end); a stopped one keeps what it found;
- damaged Fashion-MNIST files are a one-line error with exit code 2;
- ``--no-progress`` prints no progress bars, whatever draws them;
- ``--no-cache`` keeps no checkpoint, a default run keeps and reuses them;
- bad arguments are usage errors (exit code 2, one line).

The CLI runs in-process at the ``TINY`` size (patched in for ``QUICK``), on tiny data
written by the tests, with one section or a stand-in section.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from captum_regularized.cli import main
from captum_regularized.models import train_classifier
from captum_regularized.study import TINY, model_zoo, runner, settings
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim
from tests.datasets.test_fashion_mnist import idx_bytes, make_data, write

# tqdm draws its bar after a carriage return; these are in every bar it prints
BAR_MARKS = ("\r", "it/s", "%|")


def _reproduce(monkeypatch, argv, *, sizes=TINY, sections=None):
    monkeypatch.setattr(settings, "QUICK", sizes)
    if sections is not None:
        monkeypatch.setattr(runner, "SECTIONS", sections)
    return main(["reproduce", "--quick", "--no-progress", *argv])


def _image_folder(root: Path, per_class: tuple[int, ...]) -> Path:
    rng = np.random.default_rng(0)
    for label, count in enumerate(per_class):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{index}.png")
    return root


# --- item 13: a last training batch of one image


def test_train_classifier_drops_a_last_batch_of_one_for_batchnorm():
    """9 images in batches of 8: the batch of one would stop BatchNorm in train mode."""
    data = TensorDataset(torch.rand(9, 3, 4, 4), torch.randint(0, 2, (9,)))
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(48, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
        torch.nn.Linear(4, 2),
    )
    history = train_classifier(model, data, epochs=2, batch_size=8, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


def test_train_classifier_keeps_a_last_batch_of_one_without_batchnorm():
    """Without BatchNorm every example is used: the loss is the mean over all nine."""
    images, labels = torch.rand(9, 4), torch.randint(0, 2, (9,))
    model = torch.nn.Linear(4, 2)
    seen = []

    def hook(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(len(y))
        return torch.nn.functional.cross_entropy(model(x), y)

    train_classifier(model, TensorDataset(images, labels), epochs=1, batch_size=8, loss=hook,
                     progress=False)
    assert sorted(seen) == [1, 8]


def test_image_folder_with_a_last_batch_of_one_runs(tmp_path, monkeypatch, capsys):
    """11 images: 2 held out, 9 to train in batches of 8 (the ResNet's BatchNorm cannot
    take a last batch of one in train mode)."""
    folder = _image_folder(tmp_path / "images", (6, 5))
    out = tmp_path / "out"
    sizes = replace(TINY, batch_size=8)
    code = _reproduce(monkeypatch, ["--data", str(folder), "--out", str(out)], sizes=sizes,
                      sections={"trains": _trains_resnet})
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and list(results["data_sets"]) == ["folder"]
    [model] = results["models"]
    assert model["name"] == "resnet" and model["data"] == "folder"
    assert 0.0 <= model["accuracy"] <= 1.0 and model["scored"] is True  # no floor for folders
    [claim] = results["claims"]
    assert claim["verdict"] in ("held", "not held", "inconclusive")


def _trains_resnet(context: StudyContext) -> Section:
    """A stand-in section that trains the ResNet and scores its correctness twice."""
    trained = context.zoo.get("resnet", context.seeds[0])
    assert len(context.data.for_seed(context.seeds[0]).train_set) == 9
    section = Section("trains", "Trains", 1, "A paper", "A claim.", "A protocol.")
    section.uses("models", "resnet", trained)
    section.uses("models", "again", trained)
    section.record("models", "resnet", "correct", trained.correct)
    section.record("models", "again", "correct", trained.correct)
    section.claims.append(Claim(1, "no worse", "models", "resnet", "again", "correct",
                                "higher", margin=0.1))
    return section


def _writes_then(error: BaseException):
    """A stand-in section: a figure, then ``error`` (as a section failing half-way)."""

    def section(context: StudyContext) -> Section:
        (context.out / f"{context.figure_prefix}half.png").write_bytes(b"\x89PNG half")
        raise error

    return section


def _finished(context: StudyContext) -> Section:
    """A stand-in section that finishes at once, with a figure and no claims."""
    (context.out / f"{context.figure_prefix}done.png").write_bytes(b"\x89PNG done")
    section = Section("done", "Done", 1, "A paper", "A claim.", "A protocol.")
    section.figures.append((f"{context.figure_prefix}done.png", "a figure"))
    return section


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_study_leaves_no_output(tmp_path, monkeypatch, existing):
    out = tmp_path / "new" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    sections = {"done": _finished, "fails": _writes_then(RuntimeError("section broke"))}
    with pytest.raises(RuntimeError, match="section broke"):
        _reproduce(monkeypatch, ["--data", "synthetic", "--out", str(out)], sections=sections)
    if existing:  # the user's file, nothing else (no staging folder either)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not (tmp_path / "new").exists()


def test_a_stopped_study_keeps_the_sections_it_finished(tmp_path, monkeypatch):
    out = tmp_path / "out"
    sections = {"done": _finished, "stopped": _writes_then(KeyboardInterrupt())}
    with pytest.raises(KeyboardInterrupt):
        _reproduce(monkeypatch, ["--data", "synthetic", "--out", str(out)], sections=sections)
    assert sorted(p.name for p in out.iterdir()) == [
        "report.md", "results.json", "synthetic_done.png",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert list(results["sections"]["synthetic"]) == ["done"]
    assert "The run was stopped before it finished" in (out / "report.md").read_text()


def test_a_finished_study_moves_everything_into_out(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = _reproduce(monkeypatch, ["--data", "synthetic", "--out", str(out)],
                      sections={"done": _finished})
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "keep.txt", "report.md", "results.json", "synthetic_done.png",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and list(results["sections"]["synthetic"]) == ["done"]
    assert results["sections"]["synthetic"]["done"]["figures"] == [
        {"file": "synthetic_done.png", "caption": "a figure"}]
    report = (out / "report.md").read_text()
    assert "](synthetic_done.png)" in report and "was stopped" not in report


# --- item 14: damaged Fashion-MNIST files


def _count_mismatch(root: Path) -> str:
    files = make_data()
    files["train-labels-idx1-ubyte"] = idx_bytes(torch.arange(11) % 10)  # 12 images
    write(root, files)
    return "holds 12 images but"


def _truncated_gzip(root: Path) -> str:
    write(root, make_data())
    path = root / "t10k-images-idx3-ubyte.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    assert gzip.decompress(content)  # the intact file was fine
    return "t10k-images-idx3-ubyte.gz is not a readable gzip file"


@pytest.mark.parametrize("damage", [_count_mismatch, _truncated_gzip])
@pytest.mark.parametrize("data", [["--data", "fashion-mnist"], []])
def test_damaged_fashion_mnist_is_a_one_line_error(damage, data, tmp_path, monkeypatch,
                                                   capsys):
    root = tmp_path / "fashion"
    message = damage(root)
    out = tmp_path / "out"
    argv = [*data, "--data-root", str(root), "--out", str(out)]
    assert _reproduce(monkeypatch, argv, sections={"done": _finished}) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert err.startswith("captum-regularized: error: --data")
    assert not out.exists()


# --- item 15: --no-progress


def test_no_progress_prints_no_bars(tmp_path, monkeypatch, capfd):
    """The guided section trains five models and runs Score-CAM, whose progress bar the
    study keeps off."""
    sizes = replace(TINY, train_samples=32, synthetic_train_samples=32, test_samples=8,
                    eval_examples=2, finetune_samples=16, perturbation_steps=2, figure_rows=1)
    out = tmp_path / "out"
    code = _reproduce(monkeypatch, ["--data", "synthetic", "--out", str(out)], sizes=sizes,
                      sections={"guided_gradients": runner.SECTIONS["guided_gradients"]})
    printed = capfd.readouterr()
    assert code == 0
    for mark in BAR_MARKS:
        assert mark not in printed.err and mark not in printed.out, mark
    # stages still print
    assert "guided gradients: scoring SimpleCNN, before fine-tuning" in printed.out
    assert "section guided_gradients: start" in printed.out


# --- the checkpoint cache of the command line


def _trains_simple_cnn(context: StudyContext) -> Section:
    """A stand-in section that trains the SimpleCNN and records its correctness."""
    trained = context.zoo.get("simple_cnn", context.seeds[0])
    section = Section("simple", "Simple", 1, "A paper", "A claim.", "A protocol.")
    section.record("models", "simple_cnn", "correct", trained.correct)
    return section


def test_no_cache_writes_no_checkpoint(tmp_path, monkeypatch, private_cache):
    out = tmp_path / "out"
    code = _reproduce(monkeypatch, ["--data", "synthetic", "--out", str(out), "--no-cache"],
                      sections={"simple": _trains_simple_cnn})
    assert code == 0
    assert not private_cache.exists() or not any(private_cache.iterdir())
    command = json.loads((out / "results.json").read_text())["environment"]["command"]
    assert command.endswith("--no-cache")


def test_a_default_run_keeps_its_checkpoints_and_the_next_one_loads_them(
        tmp_path, monkeypatch, private_cache):
    sections = {"simple": _trains_simple_cnn}
    argv = ["--data", "synthetic", "--seed", "3"]
    assert _reproduce(monkeypatch, [*argv, "--out", str(tmp_path / "one")],
                      sections=sections) == 0
    [file] = private_cache.iterdir()
    assert file.name.startswith("simple_cnn-3-") and file.suffix == ".pt"
    first = json.loads((tmp_path / "one" / "results.json").read_text())["models"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(model_zoo, "train_classifier", no_training)
    assert _reproduce(monkeypatch, [*argv, "--out", str(tmp_path / "two")],
                      sections=sections) == 0
    second = json.loads((tmp_path / "two" / "results.json").read_text())["models"]
    assert [file] == list(private_cache.iterdir())
    for key in ("name", "seed", "accuracy", "train_seconds", "mean_max_softmax"):
        assert second[0][key] == first[0][key], key


# --- bad arguments


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["--data", "/nonexistent/images"], "--data /nonexistent/images: not a folder"),
        (["--data", "fashion"], "expected one of synthetic, fashion-mnist or an image folder"),
        (["--data", "fashion-mnist", "--data-root", "/nonexistent/fm"],
         "--data-root /nonexistent/fm: not a folder"),
        (["--data", "fashion-mnist", "--data-root", "."], "--data fashion-mnist: Fashion-MNIST"),
        (["--seeds", "two"], "invalid int value"),
        (["--device", "tpu"], "invalid choice"),
        (["--no-cache=yes"], "ignored explicit argument"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main(["reproduce", "--out", str(out), *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()
