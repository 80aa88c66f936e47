"""``captum-regularized reproduce``: files, sections, verdicts and argument errors.

The CLI's ``--quick`` is the CI-sized run; here the same code path runs with the
smaller ``TINY`` settings (patched in for ``QUICK``) to keep the test fast, on the
synthetic data and on tiny Fashion-MNIST files written by the test.
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
from tests.datasets.test_fashion_mnist import make_data, write

SECTION_KEYS = ["signed_maps", "rsi_grad_cam", "guided_gradients", "norm_adversarial"]


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """Four tiny Fashion-MNIST IDX files (12 training, 5 test images), as Debian installs them."""
    root = tmp_path_factory.mktemp("fashion")
    write(root, make_data())
    return root


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Unpacked Fashion-MNIST copies go to a temporary cache, not the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


def _tiny_cli(argv):
    patch = pytest.MonkeyPatch()
    patch.setattr(settings, "QUICK", TINY)
    try:
        return main(["reproduce", "--quick", "--no-progress", *argv])
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_root):
    """The full study (no --data) at TINY size: both data sets."""
    out = tmp_path_factory.mktemp("reproduce")
    code = _tiny_cli(["--out", str(out), "--seed", "2", "--data-root", str(fashion_root)])
    return code, out


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_writes_report_results_and_figures(quick_run):
    code, out = quick_run
    assert code == 0
    results = _results(out)
    assert results["quick"] is True and results["seeds"] == [2]
    assert results["settings"]["train_samples"] == TINY.train_samples
    assert list(results["data_sets"]) == ["synthetic", "fashion-mnist"] and not results["notes"]
    report = (out / "report.md").read_text()
    for record in results["data_sets"].values():
        figures = [f["file"] for s in record["sections"].values() for f in s["figures"]]
        assert len(figures) >= 5
        for file in figures:
            assert (out / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", file
            assert f"]({file})" in report
        for section in record["sections"].values():
            assert section["title"] in report
    assert results["rule"] in report


def _claims(record):
    return [c for s in record["sections"].values() for c in s["claims"]]


def test_results_have_the_four_sections_with_numbers_per_data_set(quick_run):
    _, out = quick_run
    results = _results(out)
    for data, record in results["data_sets"].items():
        assert list(record["sections"]) == SECTION_KEYS == list(SECTIONS)
        for key, section in record["sections"].items():
            assert section["claims"], key
            for rows in section["tables"].values():
                for metrics in rows.values():
                    for summary in metrics.values():
                        assert len(summary["per_seed"]) == 1
                        assert math.isfinite(summary["mean"]), (data, key)
        signed = record["sections"]["signed_maps"]["tables"]
        for table in ("SimpleCNN", "resnet18"):
            for method in ("original", "positive", "active"):
                assert 0.0 <= signed[table][method]["black_deletion_auc"]["mean"] <= 0.9
        rsi = record["sections"]["rsi_grad_cam"]["tables"]
        assert 0.0 <= rsi["saturated"]["RSI-Grad-CAM"]["pointing_game"]["mean"] <= 1.0
        assert {m["recipe"] for m in record["models"]} == set(RECIPES)  # each trained once
        assert all(m["seeds"] == 1 and 0.0 <= m["accuracy"] <= 1.0 for m in record["models"])
        # both data sets have masks: every claim was measured
        assert all(c["measured"] for c in _claims(record))
    fashion = results["data_sets"]["fashion-mnist"]
    assert fashion["label"] == "Fashion-MNIST" and "Fashion-MNIST from" in fashion["source"]
    assert "harder configuration" in results["data_sets"]["synthetic"]["source"]


def test_papers_settings_rows_are_in_the_results(quick_run):
    _, out = quick_run
    for record in _results(out)["data_sets"].values():
        sections = record["sections"]
        for table in ("standard", "saturated", "resnet18"):
            rows = sections["rsi_grad_cam"]["tables"][table]
            assert {"RSI-Grad-CAM (authors, relu_gradients)",
                    "RSI-Grad-CAM (authors, unit_selection)"} <= set(rows)
        # the two authors' variants are different maps: their numbers differ somewhere
        rows = sections["rsi_grad_cam"]["tables"]["standard"]
        relu = rows["RSI-Grad-CAM (authors, relu_gradients)"]
        unit = rows["RSI-Grad-CAM (authors, unit_selection)"]
        assert any(relu[m]["mean"] != unit[m]["mean"] for m in relu)
        guided = sections["guided_gradients"]["tables"]["models"]
        assert {
            "baseline", "regularized", "regularized (paper's weight)",
            "MobileNet-V2 baseline", "MobileNet-V2 regularized",
        } == set(guided)
        adversarial = sections["norm_adversarial"]["tables"]["models"]
        for norm in ("l1", "elastic_net", "group"):
            assert {f"{norm} (fast)", f"{norm} (iterative)", f"{norm} (authors)"} <= set(
                adversarial
            )
        paper = {c["text"]: c["paper"] for c in sections["signed_maps"]["claims"]}
        assert ".14" in paper["SimpleCNN: positive map beats the original map under black deletion"]
        texts = [c["text"] for c in sections["norm_adversarial"]["claims"]]
        assert "l1 (authors): sparser gradient maps (gini)" in texts
    settings_record = _results(out)["settings"]
    assert settings_record["paper_guided_weight"] == 7.5e-3
    assert settings_record["paper_step_fraction"] == 0.3


def test_the_authors_adversary_is_built_with_their_inner_loop():
    from captum_regularized.models import SimpleCNN

    model = SimpleCNN(4, width=2)
    loss = RECIPES["adv_l1_authors"].loss(model, TINY)
    assert loss.start == "zero" and loss.update_batchnorm is True
    assert loss.select_iterate == "last" and loss.steps == TINY.adv_steps
    assert loss.step_size == pytest.approx(0.3 * TINY.adv_epsilon)
    ours = RECIPES["adv_l1_iterative"].loss(model, TINY)
    assert ours.start == "closed_form" and ours.select_iterate == "best"
    assert ours.update_batchnorm is False


def test_gradient_concentration_compares_both_configurations(quick_run):
    _, out = quick_run
    rows = _results(out)["data_sets"]["synthetic"]["gradient_concentration"]
    assert sorted(rows) == ["harder", "standard"]
    for row in rows.values():
        assert 0.0 <= row["energy_in_mask"]["mean"] <= 1.0
        assert 0.0 < row["mask_area"]["mean"] < 1.0
    assert rows["harder"]["mask_area"]["mean"] < rows["standard"]["mask_area"]["mean"]
    assert "How concentrated the plain gradient is" in (out / "report.md").read_text()


def test_the_report_puts_the_data_sets_side_by_side(quick_run):
    _, out = quick_run
    results = _results(out)
    report = (out / "report.md").read_text()
    header = ("| claim | metric | paper | SyntheticShapes: baseline → method; improvement; "
              "verdict | Fashion-MNIST: baseline → method; improvement; verdict |")
    assert report.count(header) == len(SECTION_KEYS)
    synthetic, fashion = (results["data_sets"][k] for k in ("synthetic", "fashion-mnist"))
    for claim, other in zip(_claims(synthetic), _claims(fashion)):
        assert claim["text"] == other["text"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {claim['text']} |"))
        cells = row.split(" | ")
        for record, cell in ((claim, cells[-2]), (other, cells[-1])):
            assert ("**held**" in cell) == record["held"]
            assert f"{record['improvement_mean']:+.3f}" in cell
    not_held = sum(not c["held"] for c in _claims(synthetic) + _claims(fashion))
    assert report.count("\n- *") == not_held  # one sentence per claim that did not hold
    for record in (synthetic, fashion):
        line = f"{record['label']} **{record['summary']['held']} of {record['summary']['claims']}**"
        assert line in report


def test_every_verdict_follows_the_stated_rule(quick_run):
    _, out = quick_run
    results = _results(out)
    for record in results["data_sets"].values():
        count = 0
        for section in record["sections"].values():
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
        assert count == record["summary"]["claims"] >= 90
    assert results["summary"] == {k: r["summary"] for k, r in results["data_sets"].items()}


@pytest.mark.parametrize(
    "data, label, other", [("fashion-mnist", "Fashion-MNIST", "SyntheticShapes"),
                           ("synthetic", "SyntheticShapes", "Fashion-MNIST")]
)
def test_one_data_set_alone(data, label, other, tmp_path, fashion_root):
    results = run_study(tmp_path, settings=TINY, progress=False, stages=False, data=data,
                        data_root=fashion_root, sections=["guided_gradients"])
    assert list(results["data_sets"]) == [data] and not results["notes"]
    report = (tmp_path / "report.md").read_text()
    assert f"{label}: baseline → method" in report and f"{other}:" not in report
    tables = results["data_sets"][data]["sections"]["guided_gradients"]["tables"]
    assert "gradient_energy_in_mask" in tables["models"]["baseline"]  # both have masks
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{data}_guided_examples.png"]


def test_the_command_line_records_the_data_options():
    import argparse
    from pathlib import Path

    from captum_regularized.study.command import _command_line, add_reproduce_parser

    parser = argparse.ArgumentParser()
    add_reproduce_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", "--data", "fashion-mnist", "--data-root", "/d"])
    assert args.data == "fashion-mnist" and args.data_root == Path("/d")
    assert _command_line(args).endswith("--data fashion-mnist --data-root /d")


def test_two_seeds_side_by_side_in_full_mode(tmp_path, fashion_root):
    """Full mode (no --quick) with both data sets and two seeds: verdicts carry a spread."""
    results = run_study(tmp_path, settings=TINY.with_seeds(2), progress=False, stages=False,
                        data_root=fashion_root, sections=["guided_gradients"])
    assert list(results["data_sets"]) == ["synthetic", "fashion-mnist"]
    assert results["quick"] is False and results["complete"] is True
    report = (tmp_path / "report.md").read_text()
    for record in results["data_sets"].values():
        for claim in _claims(record):
            assert claim["seeds"] == 2
            assert f"± {claim['improvement_spread']:.3f}" in report
    assert "With a single seed" not in report and "Fashion-MNIST: baseline" in report


def test_missing_fashion_mnist_runs_synthetic_only_and_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    results = run_study(tmp_path, settings=TINY, progress=False, data_root=empty,
                        sections=["guided_gradients"])
    assert list(results["data_sets"]) == ["synthetic"]
    assert len(results["notes"]) == 1 and "not found" in results["notes"][0]
    assert "SyntheticShapes only" in results["notes"][0]
    assert results["notes"][0] in capsys.readouterr().out  # on the console
    assert results["notes"][0] in (tmp_path / "report.md").read_text()


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
    assert list(results["data_sets"]) == ["folder"]
    record = results["data_sets"]["folder"]
    section = record["sections"]["rsi_grad_cam"]
    assert "image folder" in record["source"] and record["label"] == "image folder"
    assert any("mask metrics are skipped" in note for note in section["notes"])
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
        (["--data", "fashion"], "expected one of synthetic, fashion-mnist or an image folder"),
        (["--data", "fashion-mnist", "--data-root", "/nonexistent/fm"],
         "--data-root /nonexistent/fm: not a folder"),
        (["--data", "fashion-mnist", "--data-root", "."], "--data fashion-mnist: Fashion-MNIST"),
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


def test_report_records_the_run_and_summarises_the_verdicts(quick_run, fashion_root):
    _, out = quick_run
    results = _results(out)
    env = results["environment"]
    assert env["command"] == (
        f"captum-regularized reproduce --quick --device cpu --seed 2 --data-root {fashion_root}"
    )
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    report = (out / "report.md").read_text()
    assert env["command"] in report and "Departures from the papers" in report
    summary = report[report.index("## Summary"):report.index("## The run")]
    records = list(results["data_sets"].values())
    for key in SECTION_KEYS:
        cells = []
        for record in records:
            claims = record["sections"][key]["claims"]
            cells.append(f"{sum(c['held'] for c in claims)} of {len(claims)}")
        title = records[0]["sections"][key]["title"]
        assert f"| {title} | {' | '.join(cells)} |" in summary
    assert f"| `train_samples` | {TINY.train_samples} |" in report
