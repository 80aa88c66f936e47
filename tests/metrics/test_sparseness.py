"""Gini sparseness against the mean-absolute-difference closed form and Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_regularized.metrics import gini_sparseness


def _mean_difference_gini(values: torch.Tensor) -> float:
    """Gini = sum_ij |a_i - a_j| / (2 n^2 mean): an O(n^2) definition, no sorting."""
    a = values.abs().flatten().double()
    n = a.numel()
    return float((a[:, None] - a[None, :]).abs().sum() / (2 * n * n * a.mean()))


def test_hand_computed_values():
    maps = torch.tensor([[0.0, 0.0, 0.0, 5.0], [1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 3.0]])
    # third row: sorted (0, 0, 1, 3), weights (-3, -1, 1, 3) -> (1 + 9) / (4 * 4) = 0.625
    assert gini_sparseness(maps).tolist() == pytest.approx([0.75, 0.0, 0.625])


def test_matches_the_pairwise_definition(device):
    maps = torch.randn(4, 3, 5, 5, device=device)
    values = gini_sparseness(maps)
    assert values.device == maps.device
    expected = [_mean_difference_gini(m) for m in maps.cpu()]
    assert values.cpu().tolist() == pytest.approx(expected, rel=1e-5)


def test_degenerate_maps_are_zero_not_nan():
    assert gini_sparseness(torch.zeros(2, 1, 4, 4)).tolist() == [0.0, 0.0]
    assert gini_sparseness(torch.full((1, 9), -2.0)).tolist() == [0.0]
    assert gini_sparseness(torch.zeros(0, 3)).shape == (0,)


def test_sparser_is_higher():
    dense = torch.rand(1, 64) + 1
    sparse = dense.clone()
    sparse[0, 8:] = 0
    assert float(gini_sparseness(sparse)) > float(gini_sparseness(dense))


def test_bad_input():
    with pytest.raises(ValueError, match="batch"):
        gini_sparseness(torch.rand(5))
    with pytest.raises(ValueError, match="NaN"):
        gini_sparseness(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="attributions"):
        gini_sparseness(np.ones((2, 2)))


def test_equals_quantus_sparseness():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 8, 8)).astype(np.float32)
    a = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.zeros(4, dtype=np.int64)
    metric = quantus.Sparseness(disable_warnings=True)
    expected = metric(model=None, x_batch=x, y_batch=y, a_batch=a.copy())
    ours = gini_sparseness(torch.from_numpy(a))
    np.testing.assert_allclose(ours.numpy(), np.asarray(expected), atol=1e-5)
