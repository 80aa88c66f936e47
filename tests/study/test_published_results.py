"""The published reproduction run: its files agree with each other and with the rules.

``docs/reproduction/results.json`` is the record of the run the README quotes; the
report and the README's summary must be what the report writer makes of it, and the
record itself must obey the study's rules (trained models only, no map coarser than
4 x 4, the paper's number beside every paper-1 claim, counts equal to the claims).
"""

import json
from pathlib import Path

import pytest

from captum_regularized.study.model_zoo import MIN_MAP_SIZE
from captum_regularized.study.report import readme_summary, write_report
from captum_regularized.study.verdicts import count_verdicts

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "reproduction"
VERDICTS = {"held", "not held", "inconclusive", "not measured"}


@pytest.fixture(scope="module")
def results():
    return json.loads((PUBLISHED / "results.json").read_text())


def test_the_published_run_is_the_full_study(results):
    assert results["quick"] is False and results["complete"] is True
    assert len(results["seeds"]) >= 3
    assert set(results["data_sets"]) == {"synthetic", "fashion-mnist"}
    assert set(results["papers"]) == {"1", "2", "3", "4"}


def test_claims_on_models_below_their_floor_are_not_measured(results):
    below = [m for m in results["models"] if not m["scored"]]
    for model in results["models"]:
        assert model["scored"] == (model["accuracy"] >= model["floor"]), model
        assert model["floor"] >= (0.9 if model["data"] == "fashion-mnist" else 0.85)
    for claim in results["claims"]:
        if claim["verdict"] != "not measured":
            continue
        assert claim["reason"], claim
    # a model below its floor never stands behind a judged claim: its reason names it
    for model in below:
        label = f"{model['label']} (seed {model['seed']})"
        judged = [c for c in results["claims"] if c["data"] == model["data"]
                  and c["verdict"] != "not measured" and label in c["reason"]]
        assert not judged


def test_no_judged_claim_rests_on_a_map_coarser_than_4x4(results):
    for claim in results["claims"]:
        if claim["map_size"] is not None and claim["verdict"] != "not measured":
            assert min(claim["map_size"]) >= MIN_MAP_SIZE, claim
    for model in results["models"]:
        if model["map_size"] is not None:
            assert min(model["map_size"]) >= MIN_MAP_SIZE, model


def test_every_claim_has_its_verdict_interval_and_paper_number(results):
    for claim in results["claims"]:
        assert claim["verdict"] in VERDICTS
        if claim["verdict"] != "not measured":
            assert claim["ci_low"] <= claim["effect"] <= claim["ci_high"], claim
            assert len(claim["seed_signs"]) == len(results["seeds"])
        if claim["verdict"] == "held":
            assert claim["ci_low"] > -claim["margin"]
            assert all(sign > 0 for sign in claim["seed_signs"]) or claim["margin"] > 0
        if claim["verdict"] == "not held":
            assert claim["ci_high"] < -claim["margin"]
    paper_one = [c for c in results["claims"] if c["paper"] == 1]
    assert len(paper_one) == 8 * len(results["data_sets"])
    assert all(c["paper_value"] is not None and not c["extra"] for c in paper_one)


def test_the_inventory_is_the_same_on_both_data_sets(results):
    inventory = {}
    for claim in results["claims"]:
        inventory.setdefault(claim["data"], []).append((claim["paper"], claim["claim"]))
    first, second = inventory.values()
    assert first == second


def test_the_summary_counts_are_the_claims(results):
    paper_claims = [c for c in results["claims"] if not c["extra"]]
    assert results["summary"]["overall"] == count_verdicts(paper_claims)
    for data, counts in results["summary"]["per_data_set"].items():
        assert counts == count_verdicts([c for c in paper_claims if c["data"] == data])


def test_report_and_readme_are_written_from_the_results(results, tmp_path):
    expected = write_report(tmp_path, results).read_text()
    assert (PUBLISHED / "report.md").read_text() == expected
    readme = (ROOT / "README.md").read_text()
    assert readme_summary(results) in readme
    for figure in (f for data in results["sections"].values() for section in data.values()
                   for f in section["figures"]):
        assert (PUBLISHED / figure["file"]).is_file(), figure["file"]
