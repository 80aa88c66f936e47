"""reduce_channels / normalize_per_example against plain loops."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.attr import (
    ActiveSaliency,
    normalize_per_example,
    reduce_channels,
)
from captum_regularized.models import SimpleCNN


def test_reduce_channels_matches_a_loop(device):
    a = torch.randn(2, 3, 4, 5, device=device)
    out = {mode: reduce_channels(a, mode) for mode in ("max", "sum", "mean")}
    for b in range(2):
        for i in range(4):
            for j in range(5):
                values = [float(a[b, k, i, j]) for k in range(3)]
                assert out["max"][b, 0, i, j].item() == pytest.approx(max(abs(v) for v in values))
                assert out["sum"][b, 0, i, j].item() == pytest.approx(sum(values), abs=1e-6)
                assert out["mean"][b, 0, i, j].item() == pytest.approx(sum(values) / 3, abs=1e-6)
    for value in out.values():
        assert value.shape == (2, 1, 4, 5) and value.device == a.device


def test_reduce_channels_default_is_the_papers_max_of_abs():
    a = torch.tensor([[[[-5.0]], [[3.0]]]])
    assert reduce_channels(a).item() == 5.0


def test_normalize_per_example_matches_a_loop_and_handles_constants(device):
    maps = torch.randn(4, 1, 3, 3, device=device)
    maps[2] = 7.0
    maps[3] = 0.0
    out = normalize_per_example(maps)
    for b in range(2):
        low, high = maps[b].min(), maps[b].max()
        assert torch.allclose(out[b], (maps[b] - low) / (high - low))
        assert out[b].min().item() == 0.0 and out[b].max().item() == pytest.approx(1.0)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))
    assert not bool(out.isnan().any())


def test_the_papers_pipeline_on_a_cnn():
    model = SimpleCNN(num_classes=4, width=4).eval()
    x = torch.rand(3, 3, 16, 16)
    maps = normalize_per_example(reduce_channels(ActiveSaliency(model).attribute(x)))
    assert maps.shape == (3, 1, 16, 16)
    flat = maps.flatten(1)
    assert torch.allclose(flat.max(1).values, torch.ones(3))
    assert torch.equal(flat.min(1).values, torch.zeros(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        reduce_channels(torch.rand(1, 3, 2, 2), "median")
    with pytest.raises(ValueError, match="channels"):
        reduce_channels(torch.rand(3))
    with pytest.raises(TypeError, match="attributions"):
        reduce_channels((torch.rand(1, 3, 2, 2),))
    with pytest.raises(TypeError, match="floating"):
        normalize_per_example(torch.ones(2, 3, dtype=torch.long))
