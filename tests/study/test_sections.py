"""The four sections and the gating of their claims, without the command line.

- the claim inventory does not depend on whether the optional ``pytorch_grad_cam`` is
  importable (the CAM methods are the package's own);
- a claim on a model below its accuracy floor, or on a CAM map coarser than 4 x 4, is
  "not measured" and says why; measured rows on scored models are judged;
- the helpers of the sections (``relative_change``, ``cam_methods``) on hand-made input;
- an image folder (no masks): the mask claims are "not measured", the others are judged.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from captum_regularized.models import SimpleCNN
from captum_regularized.study import TINY, run_study
from captum_regularized.study.guided_section import cam_methods
from captum_regularized.study.model_zoo import CifarResNet18, ModelZoo, TrainedModel
from captum_regularized.study.rsi_section import relative_change
from captum_regularized.study.runner import SECTIONS
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import Claim

VERDICTS = ("held", "not held", "inconclusive", "not measured")

# TINY, smaller still where only the code path matters (the inventory does not depend on
# any size)
SMALL = replace(
    TINY, train_samples=32, synthetic_train_samples=32, test_samples=8, eval_examples=2,
    finetune_samples=16, rsi_steps=2, ig_steps=2, stability_samples=1, perturbation_steps=2,
    roar_train_samples=16, attack_examples=2, attack_steps=1, figure_rows=1,
)


def _context(out: Path) -> StudyContext:
    data = StudyData(SMALL)
    zoo = ModelZoo(SMALL, data, log=lambda line: None, progress=False)
    return StudyContext(SMALL, data, zoo, out, seeds=[0], log=lambda line: None)


def _inventory(context: StudyContext) -> tuple[list[tuple], dict[str, list[str]]]:
    """Every claim of the four sections as (section, paper, claim, table, baseline,
    method, metric, extra), and each section's verdicts."""
    claims, verdicts = [], {}
    for key, run in SECTIONS.items():
        section = run(context)
        for claim in section.claims:
            claims.append((key, claim.paper, claim.text, claim.table, claim.baseline,
                           claim.method, claim.metric, claim.extra))
        verdicts[key] = [v.verdict for v in section.verdicts()]
    return claims, verdicts


def test_the_claim_inventory_does_not_depend_on_pytorch_grad_cam(tmp_path, monkeypatch):
    context = _context(tmp_path)  # one zoo: the second pass scores the same models
    with_it, verdicts_with = _inventory(context)
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # "not installed"
    with pytest.raises(ImportError):
        import pytorch_grad_cam  # noqa: F401
    without, verdicts_without = _inventory(context)
    assert without == with_it
    per_section = {key: sum(c[0] == key for c in without) for key in SECTIONS}
    assert per_section == {"signed_maps": 8, "rsi_grad_cam": 13, "guided_gradients": 38,
                           "norm_adversarial": 16}
    assert sum(not c[-1] for c in without) == 57  # paper claims (the rest are extras)
    # synthetic data has masks and TINY has no floors: every claim has numbers, both ways
    for verdicts in (verdicts_with, verdicts_without):
        assert all(v in VERDICTS[:3] for vs in verdicts.values() for v in vs), verdicts
    tables = {c[3] for c in without if c[0] == "guided_gradients"}
    for method in ("Grad-CAM", "Grad-CAM++", "Score-CAM"):
        assert {f"SimpleCNN, {method}", f"ResNet-18, {method}"} <= tables


# --- gating


def _trained(accuracy: float = 0.95, floor: float = 0.9,
             map_size: tuple[int, int] | None = (8, 8), recipe: str = "simple_cnn",
             seed: int = 0) -> TrainedModel:
    return TrainedModel(recipe, seed, SimpleCNN(3, width=2), accuracy, floor, 0.5, 0.0,
                        torch.ones(4), map_size=map_size)


def _section(base: TrainedModel, new: TrainedModel, *, cam: bool = False,
             seeds: int = 3) -> Section:
    """Two rows whose values clearly favour the method (lower is better)."""
    section = Section("demo", "Demo", 2, "A paper", "New beats old.", "Protocol.")
    for _ in range(seeds):
        section.record("t", "old", "auc", torch.full((20,), 0.5) + 0.01 * torch.arange(20))
        section.record("t", "new", "auc", torch.full((20,), 0.2) + 0.01 * torch.arange(20))
        section.uses("t", "old", base, cam=cam)
        section.uses("t", "new", new, cam=cam)
    section.claims.append(Claim(2, "new < old", "t", "old", "new", "auc", "lower"))
    return section


def test_a_model_below_its_floor_is_not_measured_and_says_its_accuracy():
    low = _trained(accuracy=0.3, floor=0.9, recipe="guided")
    [verdict] = _section(_trained(), low).verdicts()
    assert verdict.verdict == "not measured" and verdict.effect is None
    assert "30.00 %" in verdict.reason and "below the floor of 90 %" in verdict.reason
    assert low.label in verdict.reason and not low.scored
    assert low.unscored_reason() == verdict.reason
    # the baseline's model too
    [verdict] = _section(low, _trained()).verdicts()
    assert verdict.verdict == "not measured" and "30.00 %" in verdict.reason


def test_a_cam_map_coarser_than_4_x_4_is_not_measured():
    [verdict] = _section(_trained(map_size=(2, 2)), _trained(map_size=(2, 2)),
                         cam=True).verdicts()
    assert verdict.verdict == "not measured"
    assert "coarser than 4 x 4" in verdict.reason and "2 x 2" in verdict.reason
    assert verdict.map_size == [2, 2] and verdict.as_dict()["map_size"] == [2, 2]


def test_a_coarse_map_outside_a_cam_row_does_not_gate():
    [verdict] = _section(_trained(map_size=(2, 2)), _trained(map_size=(2, 2))).verdicts()
    assert verdict.verdict == "held" and verdict.map_size is None


def test_measured_rows_on_scored_models_are_judged():
    [verdict] = _section(_trained(map_size=(4, 4)), _trained(map_size=(4, 4)),
                         cam=True).verdicts()
    assert verdict.verdict == "held" and verdict.map_size == [4, 4]
    assert verdict.effect == pytest.approx(0.3) and verdict.reason
    assert verdict.seed_signs == [1, 1, 1] and verdict.examples == 60


def test_a_missing_row_or_table_is_not_measured():
    section = _section(_trained(), _trained())
    section.claims.append(Claim(2, "other metric", "t", "old", "new", "pointing", "higher"))
    section.claims.append(Claim(2, "other table", "u", "old", "new", "auc", "higher"))
    first, metric, table = section.verdicts()
    assert first.verdict == "held"
    assert metric.verdict == "not measured" and "has no 'pointing'" in metric.reason
    assert table.verdict == "not measured" and "'u' was not recorded" in table.reason


# --- helpers of the sections


def test_relative_change_matches_a_hand_computation():
    a = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]],
                      [[[0.0, 0.0], [0.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]],
                      [[[0.0, 0.0], [0.0, 0.0]]]])
    # ||a - b|| = 3, max(||a||, ||b||) = 5; equal maps; both zero
    assert relative_change(a, b).tolist() == pytest.approx([0.6, 0.0, 0.0])
    assert relative_change(b, a).tolist() == pytest.approx([0.6, 0.0, 0.0])
    x, y = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    expected = [float((p - q).norm() / max(p.norm(), q.norm())) for p, q in zip(x, y)]
    assert relative_change(x, y).tolist() == pytest.approx(expected)
    assert relative_change(x, -x).tolist() == pytest.approx([2.0] * 5)


@pytest.mark.parametrize("network", ["simple_cnn", "resnet"])
def test_cam_methods_give_the_three_maps_at_the_input_size(network):
    torch.manual_seed(0)
    model = (SimpleCNN(3, width=2) if network == "simple_cnn"
             else CifarResNet18(3, width=2)).eval()
    trained = TrainedModel(network, 0, model, 0.5, 0.0, 0.5, 0.0, torch.ones(2))
    images, targets = torch.rand(2, 3, 20, 20), torch.tensor([0, 2])
    methods = cam_methods(trained)
    assert list(methods) == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]
    for name, explain in methods.items():
        maps = explain(images, targets)
        assert tuple(maps.shape) == (2, 1, 20, 20), name
        assert bool(torch.isfinite(maps).all()) and not maps.requires_grad, name


def test_an_image_folder_leaves_the_mask_claims_unmeasured(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cats", "dogs"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(10):
            pixels = (torch.rand(40, 36, 3, generator=generator) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "data" / label / f"{index}.png")
    out = tmp_path / "out"
    out.mkdir()
    results = run_study(out, settings=SMALL, data=tmp_path / "data", progress=False,
                        stages=False, sections=["rsi_grad_cam"])
    assert list(results["data_sets"]) == ["folder"]
    record = results["data_sets"]["folder"]
    assert record["label"] == "image folder" and "image folder" in record["source"]
    section = results["sections"]["folder"]["rsi_grad_cam"]
    assert any("mask metrics are skipped" in note for note in section["notes"])
    metrics = {m for rows in section["tables"].values() for r in rows.values() for m in r}
    assert not {"pointing_game", "energy_in_mask"} & metrics and "deletion_auc" in metrics
    claims = results["claims"]
    unmeasured = [c for c in claims if c["verdict"] == "not measured"]
    assert {c["metric"] for c in unmeasured} == {"pointing_game", "energy_in_mask"}
    assert all(f"has no '{c['metric']}'" in c["reason"] for c in unmeasured)
    assert all(c["verdict"] in VERDICTS[:3] for c in claims if c not in unmeasured)
    summary = results["summary"]["overall"]
    assert summary["not measured"] == sum(not c["extra"] for c in unmeasured) == 2
    report = (out / "report.md").read_text()
    assert all(c["reason"] in report for c in unmeasured)
    assert all(math.isfinite(m["accuracy"]) for m in results["models"])
