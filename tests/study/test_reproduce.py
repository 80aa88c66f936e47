"""``captum-regularized reproduce``: files, sections, verdicts and argument errors.

The CLI's ``--quick`` is the CI-sized run; here the same code path runs with the
smaller ``TINY`` settings (patched in for ``QUICK``) to keep the test fast.
"""

import json
import math
import statistics

import pytest
import torch

from captum_regularized.cli import main
from captum_regularized.study import TINY, run_study, settings
from captum_regularized.study.model_zoo import RECIPES
from captum_regularized.study.runner import SECTIONS

SECTION_KEYS = ["signed_maps", "rsi_grad_cam", "guided_gradients", "norm_adversarial"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    patch = pytest.MonkeyPatch()
    patch.setattr(settings, "QUICK", TINY)
    try:
        code = main(["reproduce", "--quick", "--out", str(out), "--no-progress", "--seed", "2"])
    finally:
        patch.undo()
    return code, out


def test_writes_report_results_and_figures(quick_run):
    code, out = quick_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seeds"] == [2]
    assert results["settings"]["train_samples"] == TINY.train_samples
    report = (out / "report.md").read_text()
    figures = [f["file"] for s in results["sections"].values() for f in s["figures"]]
    assert len(figures) >= 5
    for file in figures:
        assert (out / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", file
        assert f"]({file})" in report
    for section in results["sections"].values():
        assert section["title"] in report
    assert results["rule"] in report


def test_results_have_the_four_sections_with_numbers(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    assert list(results["sections"]) == SECTION_KEYS == list(SECTIONS)
    for key, section in results["sections"].items():
        assert section["claims"], key
        for rows in section["tables"].values():
            for metrics in rows.values():
                for summary in metrics.values():
                    assert len(summary["per_seed"]) == 1
                    assert math.isfinite(summary["mean"]), key
    signed = results["sections"]["signed_maps"]["tables"]
    for table in ("SimpleCNN", "resnet18"):
        for method in ("original", "positive", "active"):
            assert 0.0 <= signed[table][method]["black_deletion_auc"]["mean"] <= 0.9
    rsi = results["sections"]["rsi_grad_cam"]["tables"]
    assert 0.0 <= rsi["saturated"]["RSI-Grad-CAM"]["pointing_game"]["mean"] <= 1.0
    accuracy = [m["accuracy"] for m in results["models"]]
    assert {m["recipe"] for m in results["models"]} == set(RECIPES)  # each trained once
    assert all(m["seeds"] == 1 for m in results["models"])
    assert all(0.0 <= a <= 1.0 for a in accuracy)


def test_every_verdict_follows_the_stated_rule(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    count = 0
    for section in results["sections"].values():
        for claim in section["claims"]:
            rows = section["tables"][claim["table"]]
            base = rows[claim["baseline"]][claim["metric"]]["per_seed"]
            new = rows[claim["method"]][claim["metric"]]["per_seed"]
            sign = 1 if claim["better"] == "higher" else -1
            d = [sign * (n - b) for b, n in zip(base, new)]
            std = statistics.stdev(d) if len(d) > 1 else 0.0
            assert claim["held"] == (statistics.mean(d) - std > -claim["margin"])
            assert claim["verdict"] == ("held" if claim["held"] else "not held")
            count += 1
    assert count == results["summary"]["claims"] >= 40


def test_image_folder_skips_mask_metrics(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cats", "dogs"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(10):
            pixels = (torch.rand(40, 36, 3, generator=generator) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "data" / label / f"{index}.png")
    out = tmp_path / "out"
    out.mkdir()
    results = run_study(out, settings=TINY, data=tmp_path / "data", progress=False, stages=False,
                        sections=["rsi_grad_cam"])
    section = results["sections"]["rsi_grad_cam"]
    assert "image folder" in results["data"]
    metrics = {m for rows in section["tables"].values() for r in rows.values() for m in r}
    assert "pointing_game" not in metrics and "energy_in_mask" not in metrics
    assert "deletion_auc" in metrics
    measured = {c["metric"] for c in section["claims"] if c["measured"]}
    assert measured == {"deletion_auc", "insertion_auc"}
    unmeasured = [c for c in section["claims"] if not c["measured"]]
    assert {c["metric"] for c in unmeasured} == {"pointing_game", "energy_in_mask"}
    assert all(c["verdict"] == "not measured" and c["missing"] for c in unmeasured)
    report = (out / "report.md").read_text()
    assert report.count("not measured:") >= len(unmeasured)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["--data", "/nonexistent/images"], "--data /nonexistent/images: not a folder"),
        (["--seeds", "two"], "invalid int value"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    try:
        code = main(["reproduce", "--out", str(tmp_path), *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_usage_error(tmp_path, capsys):
    assert main(["reproduce", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="sections must be among"):
        run_study(tmp_path, settings=TINY, sections=["nope"], progress=False, stages=False)


def test_report_records_the_run_and_summarises_the_verdicts(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    env = results["environment"]
    assert env["command"] == "captum-regularized reproduce --quick --device cpu --seed 2"
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    report = (out / "report.md").read_text()
    assert env["command"] in report and "Departures from the papers" in report
    summary = report[report.index("## Summary"):report.index("## The run")]
    for section in results["sections"].values():
        held = sum(c["held"] for c in section["claims"])
        assert f"| {section['title']} | {held} of {len(section['claims'])} |" in summary
    assert f"| `train_samples` | {TINY.train_samples} |" in report
