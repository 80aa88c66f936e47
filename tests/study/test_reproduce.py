"""``captum-regularized reproduce``: files, the results.json schema, verdicts, the report.

The CLI's ``--quick`` is the CI-sized run; here the same code path runs with the
smaller ``TINY`` settings (patched in for ``QUICK``) to keep the test fast, on the
synthetic data and on tiny Fashion-MNIST files written by the test. One such run is
shared by the tests of this module; the rest use stand-in sections.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from captum_regularized.cli import main
from captum_regularized.study import TINY, run_study, runner, settings
from captum_regularized.study.model_zoo import RECIPES
from captum_regularized.study.runner import SECTIONS
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.signed_maps_section import PAPER_NUMBERS
from captum_regularized.study.verdicts import Claim
from tests.datasets.test_fashion_mnist import make_data, write

SECTION_KEYS = ["signed_maps", "rsi_grad_cam", "guided_gradients", "norm_adversarial"]
DATA_KEYS = ["synthetic", "fashion-mnist"]
VERDICTS = ("held", "not held", "inconclusive", "not measured")
TOP_KEYS = {"settings", "environment", "quick", "seeds", "device", "rule", "departures",
            "notes", "data_sets", "papers", "models", "claims", "sections", "summary",
            "complete", "total_seconds"}
MODEL_KEYS = {"name", "label", "data", "seed", "accuracy", "floor", "scored",
              "mean_max_softmax", "map_size", "train_seconds", "notes"}
CLAIM_KEYS = {"data", "section", "paper", "claim", "paper_value", "paper_note", "extra",
              "table", "baseline", "method", "metric", "better", "margin", "effect", "ci_low",
              "ci_high", "seed_signs", "verdict", "reason", "baseline_mean", "method_mean",
              "examples", "map_size"}


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """Four tiny Fashion-MNIST IDX files (12 training, 5 test images), as Debian installs them."""
    root = tmp_path_factory.mktemp("fashion")
    write(root, make_data())
    return root


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Unpacked Fashion-MNIST copies and checkpoints go to a temporary cache, not the
    user's; the fixture gives that cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(cache))
    yield cache
    patch.undo()


def _tiny_cli(argv):
    patch = pytest.MonkeyPatch()
    patch.setattr(settings, "QUICK", TINY)
    try:
        return main(["reproduce", "--quick", "--no-progress", *argv])
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_root, private_cache):
    """The full study (no --data) at TINY size: both data sets, the checkpoint cache on."""
    out = tmp_path_factory.mktemp("reproduce")
    code = _tiny_cli(["--out", str(out), "--seed", "2", "--data-root", str(fashion_root)])
    return code, out


def _results(out):
    return json.loads((out / "results.json").read_text())


def _counts(claims):
    counts = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
    counts["measured"] = counts["held"] + counts["not held"] + counts["inconclusive"]
    return counts


# --- the files


def test_writes_report_results_and_figures(quick_run):
    code, out = quick_run
    assert code == 0
    results = _results(out)
    assert results["quick"] is True and results["seeds"] == [2] and results["complete"]
    assert results["device"] == "cpu" and results["total_seconds"] > 0
    assert results["settings"]["train_samples"] == TINY.train_samples
    assert list(results["data_sets"]) == DATA_KEYS and not results["notes"]
    report = (out / "report.md").read_text()
    assert "This is a smoke test (`--quick`" in report
    figures = []
    for data in DATA_KEYS:
        for section in results["sections"][data].values():
            assert section["figures"], section["title"]
            for figure in section["figures"]:
                assert figure["file"].startswith(f"{data}_") and figure["caption"]
                figures.append(figure["file"])
    assert len(figures) == len(set(figures)) == 10  # 2 + 1 + 1 + 1 per data set
    for file in figures:
        assert (out / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", file
        assert f"]({file})" in report, file
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "results.json", *figures])  # no staging folder left behind
    assert results["rule"] in report


def test_results_follow_the_schema(quick_run, fashion_root):
    _, out = quick_run
    results = _results(out)
    assert set(results) == TOP_KEYS
    assert results["departures"] and all(isinstance(d, str) and d
                                         for d in results["departures"])
    assert set(results["settings"]) >= {"seeds", "epochs", "adv_epsilon2", "floors"}
    fashion = results["data_sets"]["fashion-mnist"]
    assert fashion["label"] == "Fashion-MNIST" and f"from {fashion_root}" in fashion["source"]
    synthetic = results["data_sets"]["synthetic"]
    assert synthetic["label"] == "SyntheticShapes"
    assert "harder configuration" in synthetic["source"]
    assert sorted(results["papers"]) == ["1", "2", "3", "4"]
    for paper in results["papers"].values():
        assert set(paper) == {"title", "citation", "claim", "protocol"}
        assert all(isinstance(v, str) and v for v in paper.values())
    assert all(set(m) == MODEL_KEYS for m in results["models"])
    assert all(set(c) == CLAIM_KEYS for c in results["claims"])
    assert list(results["sections"]) == DATA_KEYS
    for data, sections in results["sections"].items():
        assert list(sections) == SECTION_KEYS == list(SECTIONS)
        for key, section in sections.items():
            assert set(section) == {"title", "paper", "metrics", "tables", "notes", "figures"}
            assert section["paper"] == SECTION_KEYS.index(key) + 1
            assert section["tables"] and section["metrics"]
            for rows in section["tables"].values():
                for metrics in rows.values():
                    for metric, summary in metrics.items():
                        assert metric in section["metrics"], (key, metric)
                        assert set(summary) == {"per_seed", "mean", "std", "examples"}
                        assert len(summary["per_seed"]) == 1 and summary["std"] == 0.0
                        assert 1 <= summary["examples"] <= TINY.test_samples, (data, key)
        signed = sections["signed_maps"]["tables"]
        for table in ("SimpleCNN", "ResNet-18"):
            for method in ("original", "positive", "active"):
                assert 0.0 <= signed[table][method]["black_deletion_auc"]["mean"] <= 1.0
        rsi = sections["rsi_grad_cam"]["tables"]["saturated SimpleCNN"]
        assert 0.0 <= rsi["RSI-Grad-CAM (authors)"]["pointing_game"]["mean"] <= 1.0


def test_both_data_sets_have_the_same_claims(quick_run):
    _, out = quick_run
    claims = _results(out)["claims"]
    inventory = {data: [(c["section"], c["paper"], c["claim"], c["extra"])
                        for c in claims if c["data"] == data] for data in DATA_KEYS}
    assert inventory["synthetic"] == inventory["fashion-mnist"]
    keys = inventory["synthetic"]
    assert len(keys) == len(set(keys)) == 75
    assert sum(not extra for *_, extra in keys) == 57
    assert [c["data"] for c in claims] == ["synthetic"] * 75 + ["fashion-mnist"] * 75


def test_the_summary_is_a_recount_of_the_claims(quick_run):
    _, out = quick_run
    results = _results(out)
    claims, summary = results["claims"], results["summary"]
    paper = [c for c in claims if not c["extra"]]
    assert set(summary) == {"overall", "per_data_set", "per_paper", "extra"}
    assert summary["overall"] == _counts(paper)
    assert summary["per_data_set"] == {d: _counts([c for c in paper if c["data"] == d])
                                       for d in DATA_KEYS}
    assert summary["per_paper"] == {p: _counts([c for c in paper if str(c["paper"]) == p])
                                    for p in ("1", "2", "3", "4")}
    assert summary["extra"] == _counts([c for c in claims if c["extra"]])
    assert summary["overall"]["measured"] + summary["overall"]["not measured"] == 114
    # synthetic data and Fashion-MNIST have masks and TINY has no floors
    assert summary["overall"]["not measured"] == 0


def test_every_claim_has_a_verdict_and_a_reason(quick_run):
    _, out = quick_run
    for claim in _results(out)["claims"]:
        assert claim["verdict"] in VERDICTS, claim
        assert claim["better"] in ("higher", "lower") and claim["margin"] >= 0
        if claim["verdict"] != "held":
            assert isinstance(claim["reason"], str) and claim["reason"], claim
        if claim["verdict"] == "not measured":
            assert claim["effect"] is None and claim["seed_signs"] == []
        else:
            assert len(claim["seed_signs"]) == 1 and claim["examples"] >= 1
            if claim["effect"] is not None:
                assert claim["ci_low"] <= claim["effect"] <= claim["ci_high"], claim


def test_paper_one_claims_carry_the_papers_numbers(quick_run):
    _, out = quick_run
    claims = _results(out)["claims"]
    for data in DATA_KEYS:
        first = [c for c in claims if c["data"] == data and c["paper"] == 1]
        assert len(first) == 8 and not any(c["extra"] for c in first)
        for claim in first:
            assert claim["paper_value"] is not None
            assert claim["paper_value"] == PAPER_NUMBERS[(claim["table"], claim["method"])][1]
            assert claim["baseline"] == "original" and claim["paper_note"]
        positive = next(c for c in first
                        if c["table"] == "SimpleCNN" and c["method"] == "positive")
        assert positive["paper_value"] == 0.14 and positive["metric"] == "black_deletion_auc"
        assert "original 0.23" in positive["paper_note"]
    assert all(c["paper_value"] is None for c in claims if c["paper"] != 1)


def test_cam_claims_record_their_map_size(quick_run):
    _, out = quick_run
    results = _results(out)
    sizes = {(m["data"], m["name"]): m["map_size"] for m in results["models"]}
    for claim in results["claims"]:
        cam = claim["section"] == "rsi_grad_cam" or (
            claim["section"] == "guided_gradients" and ", " in claim["table"])
        if not cam:
            assert claim["map_size"] is None, claim["claim"]
            continue
        size = claim["map_size"]
        assert isinstance(size, list) and len(size) == 2, claim["claim"]
        assert min(size) >= 4 or claim["verdict"] == "not measured", claim
        recipe = {"saturated SimpleCNN": "saturated", "SimpleCNN": "simple_cnn"}.get(
            claim["table"], "guided" if claim["table"].startswith("SimpleCNN") else "resnet")
        assert size == sizes[(claim["data"], recipe)], claim["claim"]
    # SimpleCNN's last block is a quarter of the image, the ResNet's an eighth
    assert sizes[("synthetic", "simple_cnn")] == [8, 8]
    assert sizes[("fashion-mnist", "simple_cnn")] == [7, 7]
    assert sizes[("synthetic", "resnet")] == sizes[("fashion-mnist", "resnet")] == [4, 4]


def test_models_are_recorded_once_each_with_their_floor(quick_run):
    _, out = quick_run
    models = _results(out)["models"]
    keys = [(m["name"], m["data"], m["seed"]) for m in models]
    assert len(keys) == len(set(keys)) == 2 * len(RECIPES)
    for data in DATA_KEYS:
        assert {m["name"] for m in models if m["data"] == data} == set(RECIPES)
    for model in models:
        assert 0.0 <= model["accuracy"] <= 1.0 and model["seed"] == 2
        assert model["scored"] == (model["accuracy"] >= model["floor"])
        assert model["floor"] == TINY.floor(model["data"]) == 0.0
        assert model["label"] == RECIPES[model["name"]].label
        assert 0.0 < model["mean_max_softmax"] <= 1.0 and model["train_seconds"] >= 0
    saturated = [m for m in models if m["name"] == "saturated"]
    assert all(m["mean_max_softmax"] >= TINY.saturation_target for m in saturated)


def test_the_default_run_keeps_its_checkpoints(quick_run, private_cache):
    _, out = quick_run
    folder = private_cache / "captum_regularized" / "study"
    files = sorted(p.name for p in folder.iterdir())
    trained = [m for m in _results(out)["models"] if m["name"] != "saturated"]
    assert len(files) == len(trained) == 2 * (len(RECIPES) - 1)  # one per data set each
    assert all(name.endswith(".pt") for name in files)
    for name in set(RECIPES) - {"saturated"}:
        assert sum(f.startswith(f"{name}-2-") for f in files) == 2, name


# --- the report


def test_the_report_puts_the_data_sets_side_by_side(quick_run):
    _, out = quick_run
    results = _results(out)
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    header = "| claim | paper's number | SyntheticShapes | Fashion-MNIST |"
    papers_with_extras = {c["paper"] for c in results["claims"] if c["extra"]}
    assert papers_with_extras == {2, 3, 4}
    assert lines.count(header) == 4 + len(papers_with_extras)
    labels = {"synthetic": "SyntheticShapes", "fashion-mnist": "Fashion-MNIST"}
    by_text = {}
    for claim in results["claims"]:
        by_text.setdefault((claim["section"], claim["claim"]), {})[claim["data"]] = claim
    for (_, text), found in by_text.items():
        [row] = [line for line in lines if line.startswith(f"| {text} |")]
        cells = [cell.strip() for cell in row.strip().strip("|").split(" | ")]
        assert len(cells) == 4, row
        for data, cell in zip(DATA_KEYS, cells[2:]):
            claim = found[data]
            assert ("**held**" in cell) == (claim["verdict"] == "held"), row
            assert claim["verdict"] in cell.replace("**", "")
            if claim["verdict"] != "held":
                assert f"- *{labels[data]}*, {text}: {claim['reason']}" in lines
    for number in ("0.14", "0.11", "0.12", "0.15"):
        assert number in report


def test_the_report_summarises_the_verdicts_and_records_the_run(quick_run, fashion_root):
    _, out = quick_run
    results = _results(out)
    env = results["environment"]
    assert env["command"] == (
        f"captum-regularized reproduce --quick --device cpu --seed 2 --data-root {fashion_root}"
    )
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    report = (out / "report.md").read_text()
    assert env["command"] in report and "## Departures from the papers" in report
    assert all(d in report for d in results["departures"])
    overall = results["summary"]["overall"]
    assert f"**{overall['held']} of {overall['measured']} measured paper claims held**" in report
    for data, label in (("synthetic", "SyntheticShapes"), ("fashion-mnist", "Fashion-MNIST")):
        counts = results["summary"]["per_data_set"][data]
        assert f"- {label}: {counts['held']} of {counts['measured']} held." in report
    for number, paper in results["papers"].items():
        assert f"## Paper {number}: {paper['title']}" in report
        assert paper["protocol"] in report
    assert f"| `train_samples` | {TINY.train_samples} |" in report
    assert "Seeds: 2." in report and "## Models" in report


# --- run_study with stand-in sections (fast)


def _paired(context: StudyContext) -> Section:
    """A stand-in section: per-example values of two rows per seed, one claim, one figure."""
    section = Section("paired", "Paired rows", 2, "A paper", "New beats old.", "Protocol.")
    section.metric_notes = {"m": "mean brightness (higher is better)"}
    for batch in context.eval_batches():
        brightness = batch.images.flatten(1).mean(dim=1)
        section.record("t", "old", "m", brightness)
        section.record("t", "new", "m", brightness + 0.1)
        if batch.first:
            maps = {"image": batch.images[: context.settings.figure_rows].mean(1, keepdim=True)}
            context.save_maps(section, "paired", maps, "the images", masks=False)
    section.claims.append(Claim(2, "new is brighter", "t", "old", "new", "m", "higher"))
    return section


@pytest.fixture
def paired_only(monkeypatch):
    monkeypatch.setattr(runner, "SECTIONS", {"paired": _paired})


@pytest.mark.parametrize("data, label, other", [
    ("fashion-mnist", "Fashion-MNIST", "SyntheticShapes"),
    ("synthetic", "SyntheticShapes", "Fashion-MNIST"),
])
def test_one_data_set_alone(data, label, other, tmp_path, fashion_root, paired_only):
    results = run_study(tmp_path, settings=TINY, progress=False, stages=False, data=data,
                        data_root=fashion_root)
    assert list(results["data_sets"]) == [data] and not results["notes"]
    assert list(results["sections"]) == [data] and {c["data"] for c in results["claims"]} == {
        data}
    report = (tmp_path / "report.md").read_text()
    assert f"| claim | paper's number | {label} |" in report and f"| {other} |" not in report
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{data}_paired.png", "report.md", "results.json"])
    assert results["summary"]["per_data_set"] == {data: results["summary"]["overall"]}


def test_two_seeds_give_per_seed_values_and_signs(tmp_path, paired_only):
    results = run_study(tmp_path, settings=TINY.with_seeds(2), seed=5, progress=False,
                        stages=False, data="synthetic")
    assert results["seeds"] == [5, 6] and results["quick"] is False
    summary = results["sections"]["synthetic"]["paired"]["tables"]["t"]["new"]["m"]
    assert len(summary["per_seed"]) == 2 and summary["examples"] == 2 * TINY.eval_examples
    [claim] = results["claims"]
    assert claim["verdict"] == "held" and claim["seed_signs"] == [1, 1]
    assert claim["effect"] == pytest.approx(0.1) and "all 2 seeds agree" in claim["reason"]
    assert claim["examples"] == 2 * TINY.eval_examples and claim["map_size"] is None
    assert "Seeds: 5, 6." in (tmp_path / "report.md").read_text()


def test_missing_fashion_mnist_runs_synthetic_only_and_says_so(tmp_path, capsys,
                                                               paired_only):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    results = run_study(out, settings=TINY, progress=False, data_root=empty)
    assert list(results["data_sets"]) == ["synthetic"]
    [note] = results["notes"]
    assert "not found" in note and "SyntheticShapes only" in note
    assert note in capsys.readouterr().out  # on the console
    assert note in (out / "report.md").read_text()


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="sections must be among"):
        run_study(tmp_path, settings=TINY, sections=["nope"], progress=False, stages=False)
    assert not any(tmp_path.iterdir())


def test_the_command_line_records_the_data_and_cache_options():
    from captum_regularized.study.command import _command_line, add_reproduce_parser

    parser = argparse.ArgumentParser()
    add_reproduce_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", "--data", "fashion-mnist", "--data-root", "/d"])
    assert args.data == "fashion-mnist" and args.data_root == Path("/d")
    assert args.no_cache is False
    assert _command_line(args).endswith("--data fashion-mnist --data-root /d")
    args = parser.parse_args(["reproduce", "--quick", "--seeds", "2", "--no-cache"])
    assert args.no_cache is True
    assert _command_line(args) == (
        "captum-regularized reproduce --quick --device cpu --seed 0 --seeds 2 --no-cache")
