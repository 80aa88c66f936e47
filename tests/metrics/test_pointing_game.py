"""Pointing game and energy-based pointing game against loops and Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_regularized.metrics import energy_pointing_game, pointing_game


def test_hand_computed():
    maps = torch.tensor([[[0.1, 0.9], [0.2, 0.3]], [[0.1, 0.9], [0.2, 0.3]]])
    masks = torch.tensor([[[0, 1], [0, 0]], [[1, 0], [1, 1]]])
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]
    assert energy_pointing_game(maps, masks).tolist() == pytest.approx([0.6, 0.4])


def test_matches_loops(device):
    maps = torch.randn(5, 3, 6, 6, device=device)
    masks = torch.rand(5, 1, 6, 6, device=device) > 0.6
    hits = pointing_game(maps, masks)
    energy = energy_pointing_game(maps, masks, channel_reduction="sum")
    assert hits.device == maps.device
    for b in range(5):
        per_pixel = maps[b].abs().amax(0).flatten().tolist()
        inside = masks[b, 0].flatten().tolist()
        best = max(range(36), key=lambda i: per_pixel[i])
        assert hits[b].item() == float(inside[best])
        signed = maps[b].sum(0).flatten().tolist()
        positive = [max(v, 0.0) for v in signed]
        share = sum(v for v, m in zip(positive, inside) if m) / sum(positive)
        assert energy[b].item() == pytest.approx(share, rel=1e-5)


def test_low_resolution_map_is_resized_to_the_mask():
    low = torch.rand(2, 1, 3, 3)
    masks = torch.rand(2, 9, 9) > 0.5
    upsampled = F.interpolate(low, size=(9, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        energy_pointing_game(low, masks), energy_pointing_game(upsampled, masks)
    )


def test_degenerate_maps_and_masks():
    masks = torch.ones(2, 4, 4)
    assert pointing_game(torch.zeros(2, 4, 4), masks).tolist() == [0.0, 0.0]  # points nowhere
    assert pointing_game(torch.full((2, 4, 4), 3.0), masks).tolist() == [0.0, 0.0]
    negative = -torch.rand(2, 4, 4)
    assert energy_pointing_game(negative, masks, channel_reduction="sum").tolist() == [0.0, 0.0]
    assert energy_pointing_game(torch.rand(2, 4, 4), torch.zeros(2, 4, 4)).tolist() == [0.0, 0.0]
    ties = torch.zeros(1, 2, 2)
    ties[0, 0, 0] = ties[0, 1, 1] = 1.0
    assert pointing_game(ties, torch.tensor([[[0, 0], [0, 1]]])).tolist() == [1.0]  # any tie


def test_bad_input():
    with pytest.raises(ValueError, match="masks"):
        pointing_game(torch.rand(2, 4, 4), torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="attributions"):
        pointing_game(torch.rand(3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(TypeError, match="masks"):
        energy_pointing_game(torch.rand(2, 4, 4), np.ones((2, 4, 4)))


def test_equals_quantus_pointing_game():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8)).astype(np.float32)
    a = rng.random((6, 1, 8, 8)).astype(np.float32)
    s = (rng.random((6, 1, 8, 8)) > 0.5).astype(np.float32)
    y = np.zeros(6, dtype=np.int64)
    metric = quantus.PointingGame(disable_warnings=True, abs=False, normalise=False)
    expected = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    ours = pointing_game(torch.from_numpy(a), torch.from_numpy(s))
    np.testing.assert_array_equal(ours.numpy(), np.asarray(expected, dtype=np.float32))
