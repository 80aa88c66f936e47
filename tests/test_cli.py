"""The command line: exit codes, one-line errors and the demo's output files."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_regularized.cli import main
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.demo import (
    DEMO_FULL,
    DEMO_QUICK,
    REGULARIZED_TRAINING,
    DemoSettings,
    _fine_tuned,
)
from captum_regularized.models import SimpleCNN
from captum_regularized.study.study_data import StudyData


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["demo", "--quick", "--out", str(out), "--no-progress", "--seed", "3"])
    return code, out, printed.getvalue()


def test_quick_demo_writes_its_files(quick_demo):
    code, out, _ = quick_demo
    assert code == 0
    for name in ("attributions.png", "metrics.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "metrics.json").read_text())
    assert results["quick"] is True and results["seed"] == 3
    assert 0.0 <= results["accuracy"] <= 1.0
    assert len(results["history"]) == results["settings"]["epochs"]
    expected_methods = [
        "Saliency", "GuidedBackprop", "Grad-CAM", "Positive saliency", "Negative saliency",
        "Active saliency", "Inactive saliency", "RSI-Grad-CAM",
    ]
    assert list(results["methods"]) == expected_methods
    for name in expected_methods:
        scores = results["methods"][name]
        assert 0.0 <= scores["energy_in_mask"] <= 1.0
        assert 0.0 <= scores["pointing_game"] <= 1.0
    assert list(results["training"]) == ["plain cross-entropy", "guided alignment",
                                         "l1 adversarial"]
    assert results["figure_columns"] == [
        "input", "ground-truth mask", *expected_methods,
        "Saliency, guided alignment", "Saliency, l1 adversarial",
    ]
    for name, row in results["training"].items():
        assert -1.0 <= row["gradient_alignment"] <= 1.0, name
        assert 0.0 <= row["accuracy"] <= 1.0, name
    report = (out / "report.md").read_text()
    assert "![attribution maps](attributions.png)" in report
    assert all(name in report for name in results["methods"])
    assert all(f"| {name} |" in report for name in results["training"])
    assert (out / "attributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_demo_without_progress_prints_no_bars(quick_demo):
    code, out, printed = quick_demo
    assert code == 0 and f"wrote {out / 'report.md'}\n" in printed
    for mark in ("\r", "it/s", "%|", "epoch 1/"):  # tqdm's bars, the epoch lines
        assert mark not in printed, mark


def test_demo_fine_tune_lines_have_no_nan_accuracy(capsys):
    """Every loss returns its logits (a RegularizerOutput): every line has the accuracy."""
    data = TensorDataset(torch.rand(8, 3, 16, 16), torch.randint(0, 3, (8,)))
    settings = DemoSettings(replace(DEMO_QUICK.study, batch_size=4), finetune_epochs=1,
                            finetune_samples=8)
    tuned = _fine_tuned(SimpleCNN(3, width=2), data, settings, "cpu", seed=0, progress=True)
    assert list(tuned) == list(REGULARIZED_TRAINING)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == len(REGULARIZED_TRAINING)
    assert not any("nan" in line for line in lines), lines
    assert all(line.startswith("epoch 1/1: loss ") and "train accuracy" in line
               for line in lines), lines


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["demo", "--device", "tpu"], "invalid choice"),
        (["demo", "--seed", "abc"], "invalid int value"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["demo", "--seed", "-1"], "argument --seed: must be >= 0"),
        (["frobnicate"], "invalid choice"),
        (["reproduce", "--seed", "-1"], "argument --seed: must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, reason, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1


def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "cannot write" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_module_and_console_script_are_the_same_command():
    module = subprocess.run(
        [sys.executable, "-m", "captum_regularized", "--help"], capture_output=True, text=True
    )
    assert module.returncode == 0 and "demo" in module.stdout
    script = shutil.which("captum-regularized")
    if script is None:
        pytest.skip("the package is not installed with its console script")
    installed = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert installed.returncode == 0 and installed.stdout == module.stdout


def test_demo_sizes_are_the_documented_ones():
    """What metrics.json records as the demo's settings (its numbers depend on them)."""
    common = dict(image_size=32, num_classes=10, num_distractors=2, width=8, batch_size=64,
                  lr=1e-2, finetune_epochs=1)
    assert DEMO_QUICK.record() == {
        **common, "train_samples": 2500, "test_samples": 200, "epochs": 3, "figure_rows": 3,
        "scored_examples": 32, "deletion_steps": 8, "finetune_samples": 256,
    }
    assert DEMO_FULL.record() == {
        **common, "train_samples": 4000, "test_samples": 1000, "epochs": 5, "figure_rows": 5,
        "scored_examples": 200, "deletion_steps": 16, "finetune_samples": 4000,
    }
    assert list(DEMO_QUICK.record())[:3] == ["image_size", "train_samples", "test_samples"]


@pytest.mark.parametrize("seed", [0, 3])
def test_demo_data_are_the_plain_synthetic_shapes(seed):
    """The study's data machinery, at the demo's settings, draws what the demo always drew:
    ``SyntheticShapes`` with two distractors, the held-out set ``1_000_003`` seeds away."""
    small = DemoSettings(replace(DEMO_QUICK.study, synthetic_train_samples=6, test_samples=4), 1, 6)
    seed_data = StudyData(small.study).for_seed(seed)
    sizes = dict(image_size=32, num_classes=10, num_distractors=2)
    train = SyntheticShapes(6, seed=seed, **sizes).tensors()
    test = SyntheticShapes(4, seed=seed + 1_000_003, **sizes).tensors()
    assert len(seed_data.train_set.tensors) == len(train)
    for ours, theirs in zip(seed_data.train_set.tensors, train):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(
        (seed_data.test_images, seed_data.test_labels, seed_data.test_masks), test
    ):
        assert torch.equal(ours, theirs)
