"""Issue 12, robustness gaps of the signed maps, map post-processing, allegiance, study.

Gap 2: the signed-saliency family leaves a train-mode model's BatchNorm statistics as
found (directly, under ``NoiseTunnel`` and through the Quantus adapter), while still
computing in the model's own (train) mode. Gap 12: ``normalize_per_example`` rejects
non-finite maps. Gap 16: ``allegiance_deletion_auc`` ranks pixels by value, negative
ones below zero, and skips only zeros. Gap 18: a claim whose rows are missing is
reported as "not measured" instead of dropped.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from captum_regularized.attr import (
    ActiveSaliency,
    InactiveSaliency,
    NegativeSaliency,
    PositiveSaliency,
    normalize_per_example,
    signed_saliency_maps,
)
from captum_regularized.integrations.quantus import explain_func
from captum_regularized.metrics import ALLEGIANCE_FRACTIONS, allegiance_deletion_auc
from captum_regularized.study.report import write_report
from captum_regularized.study.section import Section
from captum_regularized.study.verdicts import Claim
from tests.model_checks import untouched

SIGNED_CLASSES = {
    "PositiveSaliency": PositiveSaliency,
    "NegativeSaliency": NegativeSaliency,
    "ActiveSaliency": ActiveSaliency,
    "InactiveSaliency": InactiveSaliency,
}


# ---------------------------------------------------------------- gap 2
def _bn_model() -> nn.Module:
    """A small CNN with BatchNorm, in train mode (as inside a training loop)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).train()


def _statistics(model: nn.Module) -> list[torch.Tensor]:
    return [
        buffer.detach().clone()
        for module in model.modules()
        if isinstance(module, nn.BatchNorm2d)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
    ]


def _assert_statistics_kept(model: nn.Module, before: list[torch.Tensor], who: str) -> None:
    after = _statistics(model)
    names = ("running_mean", "running_var", "num_batches_tracked") * (len(before) // 3)
    for name, old, new in zip(names, before, after):
        assert torch.equal(old, new), f"{who} changed {name}"
    assert model.training and all(m.training for m in model.modules()), f"{who}: mode changed"


def _train_mode_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Reference: ``dS_t/dx`` of a copy of the model, forward in train mode."""
    reference = copy.deepcopy(model).train()
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(reference(leaf)[:, target].sum(), leaf)
    return grad


ENTRY_POINTS = {
    **{name: (lambda m, x, cls=cls: cls(m).attribute(x, target=1))
       for name, cls in SIGNED_CLASSES.items()},
    "signed_saliency_maps": lambda m, x: signed_saliency_maps(m, x, target=1),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_gap_2_batchnorm_statistics_kept(name):
    model = _bn_model()
    x = torch.rand(4, 3, 8, 8)
    before = _statistics(model)
    with untouched(model, x):  # buffers included
        ENTRY_POINTS[name](model, x)
    _assert_statistics_kept(model, before, name)


def test_gap_2_outputs_still_computed_in_train_mode():
    model = _bn_model()
    x = torch.rand(4, 3, 8, 8)
    grad = _train_mode_gradient(model, x, 1)
    in_eval = copy.deepcopy(model).eval()
    leaf = x.clone().requires_grad_()
    (eval_grad,) = torch.autograd.grad(in_eval(leaf)[:, 1].sum(), leaf)
    assert not torch.allclose(grad, eval_grad, atol=1e-6)  # the test can tell the modes apart
    positive = PositiveSaliency(model).attribute(x, target=1)
    assert torch.allclose(positive, grad.clamp(min=0), atol=1e-6)
    maps = signed_saliency_maps(model, x, target=1)
    assert torch.allclose(maps["gradient"], grad, atol=1e-6)
    assert torch.allclose(maps["negative"], (-grad).clamp(min=0), atol=1e-6)


@pytest.mark.parametrize("name", sorted(SIGNED_CLASSES))
def test_gap_2_batchnorm_statistics_kept_under_noise_tunnel(name):
    model = _bn_model()
    x = torch.rand(3, 3, 8, 8)
    before = _statistics(model)
    with untouched(model, x):
        NoiseTunnel(SIGNED_CLASSES[name](model)).attribute(
            x, nt_type="smoothgrad", nt_samples=10, nt_samples_batch_size=1, stdevs=0.1,
            target=1,
        )
    _assert_statistics_kept(model, before, f"NoiseTunnel({name})")


@pytest.mark.parametrize("method", ["PositiveSaliency", "ActiveSaliency", "Saliency"])
def test_gap_2_batchnorm_statistics_kept_through_explain_func(method):
    model = _bn_model()
    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    before = _statistics(model)
    maps = explain_func(model, x, np.array([0, 1, 2]), method=method)
    assert maps.shape == x.shape
    _assert_statistics_kept(model, before, f"explain_func({method})")


def test_gap_2_captum_saliency_does_change_statistics():
    """Control: the model used above really updates its statistics on a plain call."""
    model = _bn_model()
    before = _statistics(model)
    Saliency(model).attribute(torch.rand(3, 3, 8, 8), target=0)
    assert not torch.equal(before[-1], _statistics(model)[-1])


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_gap_2_inference_mode_is_named(name):
    model = _bn_model().eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ENTRY_POINTS[name](model, x)


# ---------------------------------------------------------------- gap 12
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_gap_12_normalize_rejects_non_finite_maps(bad):
    maps = torch.tensor([[1.0, 3.0, 2.0], [0.0, 1.0, 0.5]])
    maps[1, 1] = bad
    with pytest.raises(ValueError, match="maps"):
        normalize_per_example(maps)


def test_gap_12_finite_maps_still_normalised():
    maps = torch.tensor([[1.0, 3.0, 2.0], [-4.0, -4.0, -4.0]])
    expected = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    assert torch.equal(normalize_per_example(maps), expected)


# ---------------------------------------------------------------- gap 16
def _protocol_kept(model, image: torch.Tensor, values: list[float], fill: float) -> list[bool]:
    """Reference: at each ``p`` rank all pixels by value (stable), take the top
    ``round(p * H * W)``, delete those whose value is not 0."""
    _, height, width = image.shape
    pixels = height * width
    order = sorted(range(pixels), key=lambda i: -values[i])
    with torch.no_grad():
        original = int(model(image[None]).argmax(1))
        kept = []
        for p in ALLEGIANCE_FRACTIONS:
            deleted = image.clone()
            for i in order[: round(p * pixels)]:
                if values[i] != 0:
                    deleted[:, i // width, i % width] = fill
            kept.append(int(model(deleted[None]).argmax(1)) == original)
    return kept


def _trapezoid(ys, xs):
    return sum((ys[i] + ys[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1))


class _MostNegativeWatcher(nn.Module):
    """Class 0 unless one of the ten pixels 90..99 of a 10x10 image is darkened."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        watched = images.flatten(1)[:, 90:]
        darkened = (1.0 - watched).clamp(min=0).sum(1)
        return torch.stack([torch.full_like(darkened, 0.5), darkened], dim=1)


def test_gap_16_signed_map_ranks_negatives_below_zeros():
    # 10 positive, 60 zero and 30 negative pixels; the most negative ones (90..99) decide.
    values = [1.0 - 0.05 * i for i in range(10)] + [0.0] * 60
    values += [-0.01 * (j + 1) for j in range(30)]
    maps = torch.tensor(values).view(1, 10, 10)
    x = torch.ones(1, 1, 10, 10)
    model = _MostNegativeWatcher()
    kept = _protocol_kept(model, x[0], values, 0.0)
    assert all(kept)  # the protocol never reaches pixels 90..99
    result = allegiance_deletion_auc(model, x, maps)
    assert result.kept[0].tolist() == kept
    assert float(result.auc) == pytest.approx(_trapezoid([float(k) for k in kept],
                                                         ALLEGIANCE_FRACTIONS))
    assert float(result.auc) == pytest.approx(0.9)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gap_16_signed_channel_reductions_match_the_protocol(reduction):
    torch.manual_seed(3)
    batch, height, width = 5, 6, 6
    x = torch.rand(batch, 3, height, width)
    maps = torch.randn(batch, 3, height, width)
    maps[:, :, :2] = 0  # some pixels exactly zero in every channel
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * height * width, 4))
    per_pixel = maps.sum(1) if reduction == "sum" else maps.mean(1)
    expected = [
        _protocol_kept(linear, x[b], per_pixel[b].flatten().tolist(), 0.0) for b in range(batch)
    ]
    result = allegiance_deletion_auc(linear, x, maps, channel_reduction=reduction,
                                     internal_batch_size=4)
    assert result.kept.tolist() == expected
    curve = [sum(row[i] for row in expected) / batch for i in range(len(ALLEGIANCE_FRACTIONS))]
    assert float(result.auc) == pytest.approx(_trapezoid(curve, ALLEGIANCE_FRACTIONS))


# ---------------------------------------------------------------- gap 18
def _section_with_typo() -> Section:
    section = Section("demo", "Demo", 1, "A paper", "New beats old.", "Protocol.")
    for shift in (0.0, 0.01):
        section.record("model", "old", "auc", torch.full((20,), 0.3 + shift))
        section.record("model", "new", "auc", torch.full((20,), 0.2 + shift))
    section.claims.append(Claim(1, "new < old", "model", "old", "new", "auc", "lower"))
    section.claims.append(Claim(1, "typo claim", "model", "olde", "new", "auc", "lower"))
    section.claims.append(Claim(1, "wrong metric", "model", "old", "new", "acc", "higher"))
    return section


def test_gap_18_missing_rows_are_reported_not_measured(tmp_path):
    section = _section_with_typo()
    verdicts = section.verdicts()
    assert [v.claim.text for v in verdicts] == ["new < old", "typo claim", "wrong metric"]
    assert [v.verdict for v in verdicts] == ["held", "not measured", "not measured"]
    assert not verdicts[1].held and not verdicts[1].measured
    assert "olde" in verdicts[1].reason and "acc" in verdicts[2].reason
    claims = section.claim_records("synthetic")
    assert [c["verdict"] for c in claims] == ["held", "not measured", "not measured"]
    json.loads(json.dumps(claims))  # still JSON-ready
    results = {"seeds": [0, 1], "quick": False, "total_seconds": 1.0, "rule": "r",
               "models": [], "claims": claims,
               "papers": {"1": {"title": "Demo", "citation": "A paper"}},
               "sections": {"synthetic": {"demo": section.as_dict()}}}
    report = write_report(tmp_path, results).read_text()
    assert "typo claim" in report and "wrong metric" in report
