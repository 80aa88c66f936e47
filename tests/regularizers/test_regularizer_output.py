"""One return convention for the three training losses: ``RegularizerOutput``.

Each loss returns the pair ``(logits, penalty)`` with the training loss as ``.loss``;
``loss == cross_entropy(logits, labels) + penalty``, the logits are the model's logits
for the clean batch, and ``train_classifier`` takes each loss as it is and reports the
training accuracy from those logits.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from captum_regularized.models import SimpleCNN, train_classifier
from captum_regularized.regularizers import (
    GradientNormPenalty,
    GuidedGradientRegularizer,
    NormRegularizedAdversarialLoss,
    RegularizerOutput,
)
from tests.training_reference import hand_written_step

LOSSES = {
    "guided": lambda m: GuidedGradientRegularizer(m, weight=0.5),
    "penalty": lambda m: GradientNormPenalty(m, norm="l1", epsilon=0.05),
    "adversarial": lambda m: NormRegularizedAdversarialLoss(m, norm="l1", epsilon=0.05),
    "adversarial_iterative": lambda m: NormRegularizedAdversarialLoss(
        m, norm="l1", epsilon=0.05, steps=3, start="zero", step_size=0.015
    ),
    "adversarial_mixed": lambda m: NormRegularizedAdversarialLoss(
        m, norm="group", epsilon=0.1, group_size=4, clean_weight=0.3, steps=2,
        select_iterate="best",
    ),
}


def _model() -> SimpleCNN:
    torch.manual_seed(0)
    return SimpleCNN(num_classes=3, width=4, batch_norm=False).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_returns_the_pair_with_its_loss(name):
    model = _model()
    images, labels = _batch()
    out = LOSSES[name](model)(images, labels)
    assert isinstance(out, RegularizerOutput) and isinstance(out, tuple) and len(out) == 2
    logits, penalty = out  # unpacks as the pair
    assert logits is out.logits and penalty is out.penalty
    assert logits.shape == (6, 3) and penalty.dim() == 0 and out.loss.dim() == 0
    assert out.loss.requires_grad
    # the convention: loss = task loss of the clean logits + penalty
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels) + penalty)
    # the logits are the model's logits for the clean batch
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))


@pytest.mark.parametrize("name", ["guided", "penalty"])
def test_the_penalties_loss_is_cross_entropy_plus_penalty_bit_for_bit(name):
    model = _model()
    images, labels = _batch()
    out = LOSSES[name](model)(images, labels)
    assert torch.equal(out.loss, F.cross_entropy(out.logits, labels) + out.penalty)
    assert out.logits.requires_grad  # the penalties' logits keep their graph


def test_the_adversarial_penalty_is_the_excess_over_the_clean_loss():
    model = _model()
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.05)
    out = adv(images, labels)
    delta = adv.perturb(images, labels)
    adversarial = F.cross_entropy(model(images + delta), labels)
    clean = F.cross_entropy(model(images), labels)
    torch.testing.assert_close(out.loss, adversarial)  # trained on x + delta only
    torch.testing.assert_close(out.penalty, adversarial - clean)
    assert float(out.penalty.detach()) > 0  # the adversary raises the loss
    assert not out.logits.requires_grad  # from the solver's first pass, detached
    # the penalty carries the loss's graph: both give the same parameter gradients
    grads = torch.autograd.grad(out.loss, list(model.parameters()), retain_graph=True)
    again = torch.autograd.grad(out.penalty, list(model.parameters()))
    for a, b in zip(grads, again):
        assert torch.equal(a, b)


def test_the_adversarial_logits_are_the_clean_ones_in_train_mode_too():
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=3, width=4).train()  # BatchNorm: batch statistics
    reference = copy.deepcopy(model)
    images, labels = _batch()
    out = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.05)(images, labels)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, reference(images))


def test_the_penalty_of_the_adversarial_loss_estimates_the_gradient_norm_penalty():
    """To first order ``L(x + delta) - L(x) = eps ||g||_1`` for the l1 adversary."""
    model = _model().double()
    images, labels = (t.double() if t.is_floating_point() else t for t in _batch())
    eps = 1e-4
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=eps)(images, labels)
    pen = GradientNormPenalty(model, norm="l1", epsilon=eps, mode="double_backprop")
    exact = pen(images, labels).penalty
    torch.testing.assert_close(adv.penalty, exact, rtol=1e-2, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_train_classifier_takes_each_loss_as_it_is_and_reports_accuracy(name):
    model = _model()
    images, labels = _batch()
    history = train_classifier(model, TensorDataset(images, labels), epochs=1, batch_size=6,
                               loss=LOSSES[name](model), progress=False)
    assert math.isfinite(history[0]["accuracy"]) and math.isfinite(history[0]["loss"])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_train_classifier_back_propagates_the_loss(name):
    """One step with ``loss=reg`` is the hand-written step on ``reg(x, y).loss``."""
    images, labels = _batch()
    model, reference = _model(), _model()
    history = train_classifier(model, TensorDataset(images, labels), epochs=1, batch_size=6,
                               lr=1e-2, loss=LOSSES[name](model), progress=False)
    loss = LOSSES[name](reference)
    expected = hand_written_step(reference, lambda: loss(images, labels).loss, lr=1e-2)
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-6)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_construction_needs_exactly_one_of_labels_and_loss():
    logits, penalty = torch.zeros(2, 3), torch.zeros(())
    with pytest.raises(TypeError, match="exactly one of labels= and loss="):
        RegularizerOutput(logits, penalty)
    with pytest.raises(TypeError, match="exactly one of labels= and loss="):
        RegularizerOutput(logits, penalty, labels=torch.zeros(2), loss=torch.zeros(()))


def test_the_loss_is_computed_once_and_the_output_pickles():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = RegularizerOutput(logits, torch.tensor(0.5), labels=torch.tensor([0, 1]))
    assert out.loss is out.loss
    expected = F.cross_entropy(logits, torch.tensor([0, 1])) + 0.5
    torch.testing.assert_close(out.loss, expected)
    back = pickle.loads(pickle.dumps(out))
    assert isinstance(back, RegularizerOutput)
    torch.testing.assert_close(back.loss, expected)
    assert repr(out).startswith("RegularizerOutput(logits=tensor(")
