"""Contract tests for the training losses (issue 12, gaps 1, 3, 4, 8, 9 and inference mode).

Each test names the gap it closes. The references are written here with plain autograd
(and Captum's ``GuidedBackprop`` for the guided target), never with the package's code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from torch import nn

from captum_regularized.metrics import gradient_alignment
from captum_regularized.models import SimpleCNN
from captum_regularized.regularizers import (
    GradientNormPenalty,
    GuidedGradientRegularizer,
    NormRegularizedAdversarialLoss,
)
from tests.model_checks import untouched


def _cnn(num_classes: int = 3, batch_norm: bool = True) -> SimpleCNN:
    return SimpleCNN(num_classes=num_classes, width=4, batch_norm=batch_norm)


def _batch(n: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, size, size, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2][:n])


# Every training entry point, called as ``run(model, inputs, labels)``.
ENTRY_POINTS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], object]] = {
    "guided": lambda m, x, y: GuidedGradientRegularizer(m)(x, y),
    "guided_subset": lambda m, x, y: GuidedGradientRegularizer(m, fraction=0.5)(x, y),
    "penalty_l1": lambda m, x, y: GradientNormPenalty(m, norm="l1", epsilon=0.1)(x, y),
    "penalty_group": lambda m, x, y: GradientNormPenalty(
        m, norm="group", epsilon=0.1, group_size=4
    )(x, y),
    "adversarial": lambda m, x, y: NormRegularizedAdversarialLoss(m, epsilon=0.1)(x, y),
    "adversarial_iterative": lambda m, x, y: NormRegularizedAdversarialLoss(
        m, epsilon=0.1, steps=3
    )(x, y),
    "perturb": lambda m, x, y: NormRegularizedAdversarialLoss(m, epsilon=0.1).perturb(x, y),
    "adversarial_authors_loop": lambda m, x, y: NormRegularizedAdversarialLoss(
        m, epsilon=0.1, steps=3, step_size=0.03, start="zero", update_batchnorm=True
    )(x, y),
    "guided_ungated": lambda m, x, y: GuidedGradientRegularizer(m, rule="ungated")(x, y),
}


# ---------------------------------------------------------------- gap 1: non-finite inputs


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_gap_1_non_finite_inputs_are_refused_before_any_forward(entry, bad):
    model = _cnn().train()  # a train-mode forward would move the BatchNorm statistics
    images, labels = _batch()
    images[1, 2, 3, 4] = bad
    with untouched(model, images, labels), pytest.raises(ValueError, match="inputs"):
        ENTRY_POINTS[entry](model, images, labels)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_gap_1_non_finite_gaze_masks_are_refused(bad):
    model = _cnn().train()
    images, labels = _batch()
    mask = torch.ones(4, 1, 8, 8)
    mask[2, 0, 1, 1] = bad
    penalty = GradientNormPenalty(model, norm="gaze", epsilon=0.1)
    adversarial = NormRegularizedAdversarialLoss(model, norm="gaze", epsilon=0.1)
    with untouched(model, images, labels, mask):
        for call in (penalty, adversarial, adversarial.perturb):
            with pytest.raises(ValueError, match="mask"):
                call(images, labels, mask=mask)


# ---------------------------------------------------------------- gap 3: the caller's graph


def _pre_and_model(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A trainable preprocessing module and an eval-mode float64 classifier after it."""
    torch.manual_seed(seed)
    pre = nn.Conv2d(3, 3, 1).double()
    model = _cnn().double().eval()
    return pre, model


def _gradients(loss: torch.Tensor, modules: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    params = [p for m in modules for p in m.parameters()]
    return list(torch.autograd.grad(loss, params, retain_graph=True, materialize_grads=True))


def _cross_entropy_gradient(model: nn.Module, z: torch.Tensor, labels: torch.Tensor):
    """Logits and ``grad_z sum_i CE_i`` kept in the graph (z is the caller's tensor)."""
    logits = model(z)
    losses = F.cross_entropy(logits, labels, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), z, create_graph=True)
    return logits, g


def test_gap_3_gradient_norm_penalty_trains_a_module_before_it():
    pre, model = _pre_and_model()
    x, labels = _batch()
    x = x.double()
    logits, penalty = GradientNormPenalty(model, norm="elastic_net", epsilon=0.05,
                                          epsilon2=0.2)(pre(x), labels)
    got = _gradients(F.cross_entropy(logits, labels) + penalty, (pre, model))

    z = pre(x)
    ref_logits, g = _cross_entropy_gradient(model, z, labels)
    flat = g.flatten(1)
    ref_penalty = (0.05 * flat.abs().sum(1) + 0.2 * flat.square().sum(1)).mean()
    expected = _gradients(F.cross_entropy(ref_logits, labels) + ref_penalty, (pre, model))
    assert expected[0].abs().sum() > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def _smooth_relu_net() -> nn.Module:
    """A ReLU net with a tanh before the ReLU, so the logit gradient depends on the input
    (in a purely piecewise-linear net it is locally constant and no penalty on it can
    reach a module before the net)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()


def _guided_reference(model: nn.Module, z: torch.Tensor, labels: torch.Tensor, weight: float):
    """Logits and ``weight * mean(1 - cos(dS/dz, guided))`` by autograd and Captum."""
    logits = model(z)
    (plain,) = torch.autograd.grad(
        logits.gather(1, labels[:, None]).sum(), z, create_graph=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guided = GuidedBackprop(model).attribute(z.detach().clone(), target=labels)
    cosine = F.cosine_similarity(plain.flatten(1), guided.detach().flatten(1))
    return logits, weight * (1 - cosine).mean()


def test_gap_3_guided_gradient_regularizer_trains_a_module_before_it():
    torch.manual_seed(0)
    pre, model = nn.Conv2d(3, 3, 1).double(), _smooth_relu_net()
    x, labels = _batch()
    x = x.double()
    logits, penalty = GuidedGradientRegularizer(model, weight=0.7)(pre(x), labels)
    got_ce = _gradients(F.cross_entropy(logits, labels), (pre, model))
    got_penalty = _gradients(penalty, (pre, model))

    ref_logits, ref_penalty = _guided_reference(model, pre(x), labels, 0.7)
    expected_ce = _gradients(F.cross_entropy(ref_logits, labels), (pre, model))
    expected_penalty = _gradients(ref_penalty, (pre, model))
    assert expected_ce[0].abs().sum() > 0 and expected_penalty[0].abs().sum() > 0
    for a, b in zip(got_ce + got_penalty, expected_ce + expected_penalty):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_gap_3_guided_subset_keeps_the_callers_graph_for_logits_and_penalty():
    torch.manual_seed(0)
    pre, model = nn.Conv2d(3, 3, 1).double(), _smooth_relu_net()
    x, labels = _batch()
    x = x.double()
    torch.manual_seed(5)
    logits, penalty = GuidedGradientRegularizer(model, weight=1.0, fraction=0.5)(pre(x), labels)
    torch.manual_seed(5)
    rows = torch.randperm(4)[:2]  # the subset the regularizer drew
    got = _gradients(F.cross_entropy(logits, labels) + penalty, (pre,))

    z = pre(x)
    _, ref_penalty = _guided_reference(model, z[rows], labels[rows], 1.0)
    expected = _gradients(F.cross_entropy(model(z), labels) + ref_penalty, (pre,))
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-10)
    assert _gradients(ref_penalty, (pre,))[0].abs().sum() > 0


@pytest.mark.parametrize("clean_weight", [0.0, 0.4])
def test_gap_3_adversarial_loss_backpropagates_into_a_module_before_it(clean_weight):
    pre, model = _pre_and_model()
    x, labels = _batch()
    x = x.double()
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.05,
                                         clean_weight=clean_weight)
    got = _gradients(adv(pre(x), labels).loss, (pre, model))

    z = pre(x)
    _, g = _cross_entropy_gradient(model, z, labels)
    delta = 0.05 * g.detach().sign()  # the closed-form l1 adversary, a constant
    loss = F.cross_entropy(model(z + delta), labels)
    if clean_weight:
        loss = (1 - clean_weight) * loss + clean_weight * F.cross_entropy(model(z), labels)
    expected = _gradients(loss, (pre, model))
    assert expected[0].abs().sum() > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_gap_3_a_leaf_input_that_requires_grad_receives_the_full_gradient():
    _, model = _pre_and_model()
    x, labels = _batch()
    leaf = x.double().requires_grad_(True)
    logits, penalty = GradientNormPenalty(model, epsilon=0.1)(leaf, labels)
    (penalty + F.cross_entropy(logits, labels)).backward()

    z = x.double().requires_grad_(True)
    ref_logits, g = _cross_entropy_gradient(model, z, labels)
    ref = 0.1 * g.flatten(1).abs().sum(1).mean() + F.cross_entropy(ref_logits, labels)
    (expected,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-7, atol=1e-10)


class _ShiftsItsInputInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.sub_(0.5))


@pytest.mark.parametrize("mode", ["double_backprop", "finite_difference"])
@pytest.mark.parametrize("kind", ["penalty", "guided"])
def test_gap_3_a_model_that_modifies_its_input_in_place_is_refused(kind, mode):
    model = _ShiftsItsInputInPlace()
    pre = nn.Linear(12, 12)
    x, labels = torch.rand(2, 12), torch.tensor([0, 2])
    z = pre(x)
    before = z.detach().clone()
    cls = GradientNormPenalty if kind == "penalty" else GuidedGradientRegularizer
    loss = cls(model, mode=mode)
    with pytest.raises(RuntimeError, match="in place"):
        loss(z, labels)
    assert torch.equal(z.detach(), before)


# ---------------------------------------------------------------- gap 4: one value per channel


def _mlp_with_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()


def test_gap_4_one_value_per_channel_is_refused_as_pytorch_does():
    model = _mlp_with_batchnorm()
    x, labels = torch.rand(1, 5), torch.tensor([2])
    message = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        model(x)  # plain PyTorch's own refusal, the behaviour to match
    with untouched(model, x, labels), pytest.raises(ValueError, match=message):
        GuidedGradientRegularizer(model)(x, labels)


def test_gap_4_earlier_batchnorm_statistics_are_restored_when_a_later_layer_refuses():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
    ).train()
    x, labels = torch.rand(1, 3, 8, 8), torch.tensor([1])
    with untouched(model, x, labels), pytest.raises(ValueError, match="more than 1 value"):
        GuidedGradientRegularizer(model)(x, labels)


def test_gap_4_two_examples_still_train_and_update_running_statistics_once():
    model = _mlp_with_batchnorm()
    reference = _mlp_with_batchnorm()
    reference.load_state_dict(model.state_dict())
    x, labels = torch.rand(2, 5), torch.tensor([2, 0])
    GuidedGradientRegularizer(model)(x, labels)
    reference(x)
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)


# ---------------------------------------------------------------- gap 8: labels

BAD_LABELS = [
    pytest.param(torch.tensor([0, 1, 3, 0]), ValueError, r"\[0, 2\]", id="too-large"),
    pytest.param(torch.tensor([0, -1, 2, 0]), ValueError, r"\[0, 2\]", id="negative"),
    pytest.param(torch.tensor([0, -100, 2, 0]), ValueError, "ignore_index", id="ignore-index"),
    pytest.param(torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "labels", id="float"),
    pytest.param(torch.tensor([True, False, True, True]), TypeError, "labels", id="bool"),
    pytest.param(torch.tensor([[0], [1], [2], [0]]), ValueError, r"labels.*\(4, 1\)", id="B1"),
]

LABELLED_CALLS = {
    "guided": lambda m: GuidedGradientRegularizer(m),
    "penalty": lambda m: GradientNormPenalty(m, epsilon=0.1),
    "adversarial": lambda m: NormRegularizedAdversarialLoss(m, epsilon=0.1),
    "adversarial_iterative": lambda m: NormRegularizedAdversarialLoss(m, epsilon=0.1, steps=2),
    "perturb": lambda m: NormRegularizedAdversarialLoss(m, epsilon=0.1).perturb,
}


@pytest.mark.parametrize("labels, error, match", BAD_LABELS)
@pytest.mark.parametrize("entry", sorted(LABELLED_CALLS))
def test_gap_8_bad_class_labels_are_refused_and_the_model_left_as_found(
    entry, labels, error, match
):
    model = _cnn().train()
    images, _ = _batch()
    with untouched(model, images, labels), pytest.raises(error, match=match):
        LABELLED_CALLS[entry](model)(images, labels)


@pytest.mark.parametrize("bad_label", [-1, -100])
def test_gap_8_negative_labels_are_refused_on_every_device(device, bad_label):
    # On a GPU they are caught before the forward pass (cross-entropy would silently
    # ignore -100 there); on the CPU from the logits, with the class count in the message.
    model = _cnn().to(device).train()
    images, labels = (t.to(device) for t in _batch())
    labels[1] = bad_label
    for name, make in LABELLED_CALLS.items():
        with untouched(model, images, labels), pytest.raises(
            ValueError, match=rf"labels must be class indices in \[0, .*got {bad_label}"
        ):
            make(model)(images, labels)
        assert all(p.grad is None for p in model.parameters()), name


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_gap_1_non_finite_inputs_are_refused_on_every_device(device, entry):
    model = _cnn().to(device).train()
    images, labels = (t.to(device) for t in _batch())
    images[0, 0, 0, 0] = math.nan
    with untouched(model, images, labels), pytest.raises(ValueError, match="inputs"):
        ENTRY_POINTS[entry](model, images, labels)


def test_gap_8_a_custom_loss_fn_takes_whatever_labels_it_wants():
    model = _cnn().eval()
    images, _ = _batch()
    targets = torch.rand(4, 3)  # soft targets, (B, C) floats

    def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -(y * logits.log_softmax(1)).sum(1)

    adv = NormRegularizedAdversarialLoss(model, epsilon=0.05, loss_fn=soft_cross_entropy)
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(soft_cross_entropy(model(x), targets).sum(), x)
    torch.testing.assert_close(adv.perturb(images, targets), 0.05 * g.sign())
    expected = soft_cross_entropy(model(images + 0.05 * g.sign()), targets).mean()
    torch.testing.assert_close(adv(images, targets).loss, expected)


# ---------------------------------------------------------------- gap 9: constructor numbers


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "make, name",
    [
        (lambda v: GuidedGradientRegularizer(_cnn(), weight=v), "weight"),
        (lambda v: GuidedGradientRegularizer(_cnn(), fraction=v), "fraction"),
        (lambda v: GradientNormPenalty(_cnn(), epsilon=v), "epsilon"),
        (lambda v: GradientNormPenalty(_cnn(), norm="elastic_net", epsilon2=v), "epsilon2"),
        (lambda v: NormRegularizedAdversarialLoss(_cnn(), epsilon=v), "epsilon"),
        (lambda v: NormRegularizedAdversarialLoss(_cnn(), steps=2, step_size=v), "step_size"),
        (lambda v: NormRegularizedAdversarialLoss(_cnn(), clean_weight=v), "clean_weight"),
        (lambda v: NormRegularizedAdversarialLoss(_cnn(), input_range=(0.0, v)), "input_range"),
    ],
    ids=["weight", "fraction", "epsilon", "epsilon2", "adv-epsilon", "step_size",
         "clean_weight", "input_range"],
)
def test_gap_9_non_finite_settings_are_refused(make, name, value):
    if name == "input_range" and value == math.inf:
        pytest.skip("(0, inf) is a valid one-sided clamp")
    with pytest.raises(ValueError, match=name):
        make(value)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: GuidedGradientRegularizer(_cnn(), weight="0.1"), "weight"),
        (lambda: NormRegularizedAdversarialLoss(_cnn(), step_size="0.1"), "step_size"),
        (lambda: NormRegularizedAdversarialLoss(_cnn(), clean_weight="0.5"), "clean_weight"),
        (lambda: NormRegularizedAdversarialLoss(_cnn(), input_range=("0", "1")), "input_range"),
        (lambda: NormRegularizedAdversarialLoss(_cnn(), start=0), "start"),
        (lambda: NormRegularizedAdversarialLoss(_cnn(), update_batchnorm="yes"),
         "update_batchnorm"),
        (lambda: GuidedGradientRegularizer(_cnn(), rule=1), "rule"),
    ],
)
def test_gap_9_non_numeric_settings_are_refused_naming_the_argument(make, name):
    with pytest.raises((TypeError, ValueError), match=name):
        make()


def test_gap_9_an_infinite_input_range_bound_still_clamps_the_other_side():
    model = _cnn().eval()
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(model, epsilon=0.5, input_range=(0.0, math.inf))
    out = images + adv.perturb(images, labels)
    assert out.min() >= 0 and out.max() > 1  # clamped below only


# ---------------------------------------------------------------- inference mode

INFERENCE_CALLS = {
    **{name: call for name, call in ENTRY_POINTS.items()},
    "gradient_alignment": lambda m, x, y: gradient_alignment(m, x, y),
}


@pytest.mark.parametrize("entry", sorted(INFERENCE_CALLS))
def test_gap_inference_mode_is_named(entry):
    model = _cnn().train()
    images, labels = _batch()
    with (
        untouched(model, images, labels),
        torch.inference_mode(),
        pytest.raises(RuntimeError, match="inference_mode"),
    ):
        INFERENCE_CALLS[entry](model, images, labels)
