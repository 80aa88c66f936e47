"""report.md and the README summary from a small hand-written ``results.json`` record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from captum_regularized.study.report import format_interval, readme_summary, write_report


def _claim(data: str, paper: int, text: str, verdict: str, effect: float | None,
           ci: tuple[float, float] | None, reason: str = "", extra: bool = False,
           signs: tuple[int, ...] = (1, 1, -1)) -> dict[str, Any]:
    return {
        "data": data, "section": {1: "signed_maps", 2: "rsi_grad_cam"}[paper], "paper": paper,
        "claim": text, "paper_value": 0.05 if paper == 1 else None,
        "paper_note": "Table 2: +4 points" if text.startswith("RSI") else "", "extra": extra,
        "table": "scores", "baseline": "base", "method": "method", "metric": "auc",
        "better": "higher", "margin": 0.0, "effect": effect,
        "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1],
        "seed_signs": list(signs) if effect is not None else [], "verdict": verdict,
        "reason": reason, "baseline_mean": None, "method_mean": None, "examples": 16,
        "map_size": None,
    }


def _counts(held: int, not_held: int, inconclusive: int, unmeasured: int) -> dict[str, int]:
    return {"held": held, "not held": not_held, "inconclusive": inconclusive,
            "not measured": unmeasured, "measured": held + not_held + inconclusive}


CLAIMS = [
    _claim("fashion-mnist", 1, "signed map beats |gradient|", "held", 0.0341, (0.012, 0.0511)),
    _claim("synthetic", 1, "signed map beats |gradient|", "not held", -0.021, (-0.04, -0.002),
           reason="worse on average (-0.021), 3 of 3 seeds negative"),
    _claim("fashion-mnist", 1, "negative map deletes faster", "held", 0.2, (0.1, 0.3)),
    _claim("fashion-mnist", 2, "RSI beats Grad-CAM", "inconclusive", 0.005, (-0.01, 0.02),
           reason="interval [-0.010, +0.020] contains zero"),
    _claim("synthetic", 2, "RSI beats Grad-CAM", "not measured", None, None,
           reason="row 'rsi_grad_cam' was not recorded"),
    _claim("fashion-mnist", 2, "smoothing sharpens the map", "not held", -0.5, (-0.7, -0.3),
           reason="extra reason: smoother by -0.500", extra=True),
]

MEASURE = {"per_seed": [0.5, 0.6, 0.7], "mean": 0.6, "std": 0.1, "examples": 16}


def _results() -> dict[str, Any]:
    return {
        "settings": {"epochs": 2, "lr": 0.001, "max_minutes": None, "data": "synthetic"},
        "environment": {"command": "captum-regularized reproduce --quick",
                        "date_utc": "2025-03-04T05:06:07", "versions": {"torch": "2.4"},
                        "cpu_count": 2, "torch_threads": 2},
        "quick": True, "complete": False, "seeds": [0, 1, 2], "device": "cpu",
        "rule": "A claim held when its interval is above zero.",
        "departures": ["Fewer epochs than the papers."], "notes": ["Folder data not found."],
        "data_sets": {"fashion-mnist": {"label": "Fashion-MNIST", "source": "FM source"},
                      "synthetic": {"label": "SyntheticShapes", "source": "generated"}},
        "models": [
            {"name": "simple_cnn", "label": "SimpleCNN (width 8)", "data": "fashion-mnist",
             "seed": 0, "accuracy": 0.8766, "floor": 0.5, "scored": True,
             "mean_max_softmax": 0.91, "train_seconds": 3.25, "map_size": [7, 7], "notes": ""},
            {"name": "resnet18", "label": "ResNet-18", "data": "synthetic", "seed": 1,
             "accuracy": 0.123, "floor": 0.5, "scored": False, "mean_max_softmax": None,
             "train_seconds": 1.0, "map_size": None, "notes": "fine-tuned 1 epoch"},
        ],
        "papers": {str(k): {"title": f"Title {k}", "citation": f"Author {k} et al.",
                            "claim": f"paper claim {k}", "protocol": f"protocol {k}"}
                   for k in (1, 2)},
        "claims": CLAIMS,
        "sections": {
            "fashion-mnist": {"signed_maps": {
                "title": "1. Signed maps", "paper": 1, "metrics": {"auc": "area (higher)"},
                "tables": {"scores": {"base": {"auc": MEASURE}, "method": {"auc": MEASURE}}},
                "notes": ["a section note"],
                "figures": [{"file": "fm_signed.png", "caption": "signed maps"}]}},
            "synthetic": {"signed_maps": {
                "title": "1. Signed maps", "paper": 1, "metrics": {"auc": "area (higher)"},
                "tables": {"scores": {"base": {"auc": {"per_seed": [0.4], "mean": 0.4,
                                                       "std": float("nan"), "examples": 8}}}},
                "notes": [], "figures": []}},
        },
        "summary": {"overall": _counts(2, 1, 1, 1),
                    "per_data_set": {"fashion-mnist": _counts(2, 0, 1, 0),
                                     "synthetic": _counts(0, 1, 0, 1)},
                    "per_paper": {"1": _counts(2, 1, 0, 0), "2": _counts(0, 0, 1, 1)},
                    "extra": _counts(0, 1, 0, 0)},
        "total_seconds": 150.0,
    }


@pytest.fixture
def report(tmp_path: Path) -> str:
    path = write_report(tmp_path, _results())
    assert path == tmp_path / "report.md"
    return path.read_text()


def test_summary_counts_warnings_and_rule(report: str) -> None:
    assert "**2 of 4 measured paper claims held** (1 not held, 1 inconclusive; 1 not measured)" \
        in report
    assert "- Fashion-MNIST: 2 of 3 held." in report and "- SyntheticShapes: 0 of 1 held." in report
    assert "| 2 | SyntheticShapes | 0 | 0 | 0 | 1 |" in report
    assert "Extra observations (outside the score): 0 held, 1 not held" in report
    assert "smoke test" in report and "not evidence" in report
    assert "The run was stopped before it finished" in report
    assert "## The verdict rule\n\nA claim held when its interval is above zero." in report


def test_claims_show_intervals_verdicts_and_reasons(report: str) -> None:
    row = next(line for line in report.splitlines() if line.startswith("| signed map beats"))
    assert row == ("| signed map beats \\|gradient\\| | 0.05 | +0.034 [+0.012, +0.051] · **held** "
                   "(+ + −) | -0.021 [-0.040, -0.002] · not held (+ + −) |")
    only_fm = next(line for line in report.splitlines() if line.startswith("| negative map"))
    assert only_fm.endswith("· **held** (+ + −) | – |")
    assert "| RSI beats Grad-CAM | Table 2: +4 points | +0.005 [-0.010, +0.020] · inconclusive" \
        in report
    assert "| – · not measured |" in report
    for claim in CLAIMS[1:]:
        assert claim["reason"] in report
    assert "- *SyntheticShapes*, RSI beats Grad-CAM: row 'rsi_grad_cam' was not recorded" in report
    extra = report.index("### Extra observations of paper 2 (outside the score)")
    assert report.index("smoothing sharpens the map") > extra
    assert report.index("| RSI beats Grad-CAM |") < extra


def test_models_measurements_and_run(report: str) -> None:
    assert ("| ResNet-18 | SyntheticShapes | 1 | 12.30 | 50.00 | no: below the floor | – | – | 1.0 "
            "| fine-tuned 1 epoch |") in report
    assert ("| SimpleCNN (width 8) | Fashion-MNIST | 0 | 87.66 | 50.00 | yes | 0.910 | 7×7 |"
            in report)
    assert "### Fashion-MNIST: measurements (paper 1)" in report
    assert "| method | 0.600 ± 0.100 |" in report and "| base | 0.400 |" in report
    assert "![Fashion-MNIST: signed maps](fm_signed.png)" in report
    assert "Note: a section note" in report and "- Folder data not found." in report
    assert "- Fewer epochs than the papers." in report
    assert "Total time: 150 s (2.5 min)" in report and "| `max_minutes` | – |" in report
    assert "| `lr` | 0.001 |" in report


def test_headings_unique_and_no_missing_value_text(report: str) -> None:
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings))
    assert headings[:4] == ["# Reproduction study", "## Summary", "## The verdict rule",
                            "## Models"]
    assert "## Paper 1: Title 1" in headings and "### Claims (paper 2)" in headings
    assert not re.search(r"\bNone\b|\bnan\b", report, re.IGNORECASE)


def test_readme_summary_counts_and_omits_extra_claims() -> None:
    text = readme_summary(_results())
    assert text.startswith(
        "In the published run (2025-03-04, 3 seeds; 0 minutes of model training, summed, and "
        "2.5 minutes of scoring on 2 CPU cores), 2 of 4 measured claims of the four papers "
        "held (per data set: Fashion-MNIST 2 of 3, SyntheticShapes 0 of 1).")
    assert "| claim | paper's number | Fashion-MNIST ours | SyntheticShapes ours |" in text
    assert "+0.034 [+0.012, +0.051] · **held**" in text
    assert "smoothing" not in text and "reason" not in text
    assert not re.search(r"\bNone\b|\bnan\b", text, re.IGNORECASE)


def test_format_interval_handles_missing_numbers() -> None:
    assert format_interval({"effect": None, "ci_low": None, "ci_high": None}) == "–"
    assert format_interval({"effect": -0.0204, "ci_low": None, "ci_high": None}) == "-0.020"
    assert format_interval({"effect": 0.1, "ci_low": -0.05, "ci_high": 0.25}) == \
        "+0.100 [-0.050, +0.250]"
