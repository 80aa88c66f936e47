"""Average drop / average gain / increase in confidence against closed forms and a loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from captum_regularized.metrics import (
    average_drop,
    average_gain,
    confidence_change,
    increase_in_confidence,
)
from tests.model_checks import untouched


def _two_class_logits(images: torch.Tensor) -> torch.Tensor:
    """Logits ``[0, s]`` with ``s`` the pixel sum: class 1 has probability sigmoid(s)."""
    total = images.flatten(1).sum(1)
    return torch.stack([torch.zeros_like(total), total], dim=1)


def test_hand_computed_two_class_model():
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # normalised: the same; masked sum = 1
    result = confidence_change(_two_class_logits, x, maps, 1)
    p, o = 1 / (1 + math.exp(-4)), 1 / (1 + math.exp(-1))
    torch.testing.assert_close(result.clean_probability, torch.tensor([p]))
    torch.testing.assert_close(result.masked_probability, torch.tensor([o]))
    torch.testing.assert_close(result.drop, torch.tensor([100 * (p - o) / p]))
    assert result.gain.tolist() == [0.0] and result.increase.tolist() == [0.0]
    # For class 0 the masked image is *more* confident.
    other = confidence_change(_two_class_logits, x, maps, 0)
    p0, o0 = 1 - p, 1 - o
    torch.testing.assert_close(other.gain, torch.tensor([100 * (o0 - p0) / (1 - p0)]))
    assert other.drop.tolist() == [0.0] and other.increase.tolist() == [100.0]


def test_matches_a_per_example_loop(cnn, device):
    cnn = cnn.to(device)
    x = torch.rand(5, 3, 8, 8, device=device)
    maps = torch.randn(5, 1, 4, 4, device=device)  # low resolution, signed
    target = torch.tensor([0, 1, 2, 3, 0], device=device)
    with untouched(cnn, x, maps):
        result = confidence_change(cnn, x, maps, target, internal_batch_size=2)
    mode = cnn.training
    cnn.eval()
    drops, gains, increases = [], [], []
    with torch.no_grad():
        for b in range(5):
            m = F.interpolate(maps[b:b + 1], size=(8, 8), mode="bilinear", align_corners=False)
            m = (m - m.min()) / (m.max() - m.min())
            p = F.softmax(cnn(x[b:b + 1]), 1)[0, target[b]]
            o = F.softmax(cnn(x[b:b + 1] * m), 1)[0, target[b]]
            drops.append(100 * max(float(p - o), 0.0) / float(p))
            gains.append(100 * max(float(o - p), 0.0) / float(1 - p))
            increases.append(100.0 * float(o > p))
    cnn.train(mode)
    torch.testing.assert_close(result.drop.cpu(), torch.tensor(drops), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.gain.cpu(), torch.tensor(gains), atol=1e-4, rtol=1e-4)
    assert result.increase.cpu().tolist() == increases
    # The three wrappers give the same terms.
    torch.testing.assert_close(average_drop(cnn, x, maps, target), result.drop)
    torch.testing.assert_close(average_gain(cnn, x, maps, target), result.gain)
    torch.testing.assert_close(increase_in_confidence(cnn, x, maps, target), result.increase)


def _probabilities(images: torch.Tensor) -> torch.Tensor:
    """Already probabilities: class 1 has ``t = clamp(1 + mean(x), 0, 1)``."""
    t = (1 + images.flatten(1).mean(1)).clamp(0, 1)
    return torch.stack([1 - t, t], dim=1)


def test_probabilities_zero_and_one_give_defined_values():
    x = -torch.ones(1, 1, 2, 2)  # clean: t = 0, so p(class 1) = 0 and p(class 0) = 1
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    zero = confidence_change(_probabilities, x, maps, 1, apply_softmax=False)
    assert zero.clean_probability.tolist() == [0.0]
    o = float(zero.masked_probability)
    assert o == pytest.approx(0.75)
    assert zero.drop.tolist() == [0.0]  # (p - o)+ = 0 over p = 0
    assert zero.gain.tolist() == [pytest.approx(100 * o)]
    one = confidence_change(_probabilities, x, maps, 0, apply_softmax=False)
    assert one.clean_probability.tolist() == [1.0]
    assert one.gain.tolist() == [0.0]  # (o - p)+ = 0 over 1 - p = 0
    assert one.drop.tolist() == [pytest.approx(100 * 0.75)]


def test_constant_map_masks_everything_and_empty_batch(cnn):
    x = torch.rand(2, 3, 8, 8)
    result = confidence_change(cnn, x, torch.full((2, 8, 8), 2.0), 0)
    cnn.eval()
    with torch.no_grad():
        black = F.softmax(cnn(torch.zeros_like(x)), 1)[:, 0]
    torch.testing.assert_close(result.masked_probability, black)
    for values in result[:3]:
        assert torch.isfinite(values).all()
    empty = confidence_change(cnn, torch.rand(0, 3, 8, 8), torch.rand(0, 8, 8))
    assert all(v.shape == (0,) for v in empty)


def test_bad_input(cnn):
    x = torch.rand(2, 3, 8, 8)
    with untouched(cnn, x), pytest.raises(ValueError, match="attributions"):
        average_drop(cnn, x, torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="attributions"):
        average_drop(cnn, x, [[0.0]])
    with pytest.raises(ValueError, match="target"):
        average_gain(cnn, x, torch.rand(2, 8, 8), [0, 1, 2])
