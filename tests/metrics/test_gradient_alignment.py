"""Gradient alignment against Captum's Saliency and GuidedBackprop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, Saliency
from torch import nn

from captum_regularized.metrics import gradient_alignment
from tests.model_checks import untouched


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_matches_captum_cosine(cnn, device):
    cnn = cnn.to(device).eval()
    x = torch.rand(3, 3, 8, 8, device=device)
    target = [0, 2, 3]
    with untouched(cnn, x):
        values = gradient_alignment(cnn, x, target)
    plain = Saliency(cnn).attribute(x.clone().requires_grad_(), target=target, abs=False)
    guided = GuidedBackprop(cnn).attribute(x.clone().requires_grad_(), target=target)
    expected = F.cosine_similarity(plain.flatten(1), guided.flatten(1), dim=1)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-4)
    assert bool((values < 1 - 1e-4).any())  # a random CNN is not aligned


def test_a_model_with_one_relu_layer_before_a_linear_readout_is_aligned_where_positive():
    # Without a second layer after the ReLU the guided rule changes nothing when the
    # readout weights are all positive: the cosine is 1.
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[3].weight.abs_()
    values = gradient_alignment(model, torch.rand(4, 1, 2, 4), 0)
    nonzero = values != 0
    torch.testing.assert_close(values[nonzero], torch.ones(int(nonzero.sum())))


def test_zero_gradient_gives_zero_and_train_mode_is_restored(cnn):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(-1.0)  # every ReLU is off: both gradients vanish
    assert gradient_alignment(model, torch.rand(2, 1, 2, 2), 1).tolist() == [0.0, 0.0]
    x = torch.rand(2, 3, 8, 8)
    with untouched(cnn, x):
        gradient_alignment(cnn, x)


def test_a_model_without_relu_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="ReLU"):
        gradient_alignment(model, torch.rand(2, 1, 2, 2))
