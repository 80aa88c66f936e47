"""GuidedGradientRegularizer: the penalty against independent references, BN, modes, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.models import SimpleCNN, train_classifier, with_cross_entropy
from captum_regularized.regularizers import GuidedGradientRegularizer
from tests.model_checks import assert_no_hooks, untouched
from tests.training_reference import hand_written_step


def reference_gradients(model: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    """Plain gradient by autograd and guided gradient by Captum, each in its own pass."""
    xr = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(model(xr).gather(1, classes[:, None]).sum(), xr)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guided = GuidedBackprop(model).attribute(x.clone(), target=classes)
    return plain, guided


def unit(g: torch.Tensor) -> torch.Tensor:
    flat = g.reshape(len(g), -1)
    return flat / flat.norm(dim=1, keepdim=True)


REFERENCE_DISTANCES = {
    "cosine": lambda a, b: 1 - F.cosine_similarity(a.reshape(len(a), -1), b.reshape(len(b), -1)),
    "l1": lambda a, b: (unit(a) - unit(b)).abs().mean(1),
    "mse": lambda a, b: ((unit(a) - unit(b)) ** 2).mean(1),
}


def small_cnn(device="cpu", **kwargs) -> SimpleCNN:
    return SimpleCNN(4, width=4, **kwargs).to(device)


@pytest.mark.parametrize("distance", ["cosine", "l1", "mse"])
def test_penalty_matches_captum_and_autograd_references(device, distance):
    model = small_cnn(device).eval()
    x = torch.rand(5, 3, 12, 12, device=device)
    labels = torch.tensor([0, 3, 1, 2, 3], device=device)
    reg = GuidedGradientRegularizer(model, weight=0.3, distance=distance)
    logits, penalty = reg(x, labels)
    plain, guided = reference_gradients(model, x, labels)
    expected = 0.3 * REFERENCE_DISTANCES[distance](plain, guided).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, model(x))
    cos = F.cosine_similarity(plain.flatten(1), guided.flatten(1)).mean()
    torch.testing.assert_close(reg.last_cosine, cos, rtol=1e-4, atol=1e-6)
    assert not reg.last_cosine.requires_grad and reg.last_cosine.device == x.device


def test_predicted_target_regularises_the_argmax_class():
    model = small_cnn().eval()
    x = torch.rand(6, 3, 12, 12)
    labels = torch.zeros(6, dtype=torch.long)
    logits, penalty = GuidedGradientRegularizer(model, target="predicted")(x, labels)
    predicted = logits.argmax(1)
    assert not torch.equal(predicted, labels)  # otherwise the test could not tell them apart
    _, expected = GuidedGradientRegularizer(model, target="label")(x, predicted)
    torch.testing.assert_close(penalty, expected)


def test_a_callable_distance_gets_both_gradients():
    model = small_cnn().eval()
    x, labels = torch.rand(3, 3, 12, 12), torch.tensor([0, 1, 2])
    seen = {}

    def squared_difference(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
        seen["shapes"] = (g.shape, g_guided.shape)
        return (g - g_guided).square().flatten(1).sum(1)

    reg = GuidedGradientRegularizer(model, weight=2.0, distance=squared_difference)
    _, penalty = reg(x, labels)
    plain, guided = reference_gradients(model, x, labels)
    torch.testing.assert_close(penalty, 2.0 * (plain - guided).square().flatten(1).sum(1).mean())
    assert seen["shapes"] == (x.shape, x.shape)


def test_parameter_gradient_matches_finite_differences_in_float64():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = model.double()
    x = torch.randn(3, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    weight = 0.7
    reg = GuidedGradientRegularizer(model, weight=weight)
    _, penalty = reg(x, labels)
    params = list(model.parameters())
    analytic = [
        torch.zeros_like(p) if g is None else g  # the last bias does not reach the gradient
        for p, g in zip(params, torch.autograd.grad(penalty, params, allow_unused=True))
    ]
    _, fixed_guided = reference_gradients(model, x, labels)  # the penalty's detached target

    def reference_penalty() -> torch.Tensor:
        with torch.enable_grad():
            plain, _ = reference_gradients(model, x, labels)
        return weight * REFERENCE_DISTANCES["cosine"](plain, fixed_guided).mean()

    step = 1e-6
    with torch.no_grad():
        for param, grad in zip(params, analytic):
            flat, numeric = param.view(-1), torch.zeros_like(param).view(-1)
            for i in range(flat.numel()):
                original = flat[i].item()
                flat[i] = original + step
                up = reference_penalty()
                flat[i] = original - step
                down = reference_penalty()
                flat[i] = original
                numeric[i] = (up - down) / (2 * step)
            torch.testing.assert_close(grad.view(-1), numeric, rtol=1e-5, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in analytic)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_batchnorm_statistics_move_once_as_in_plain_training(fraction):
    model = small_cnn().train()
    twin = copy.deepcopy(model)
    x, labels = torch.rand(8, 3, 12, 12), torch.randint(0, 4, (8,))
    F.cross_entropy(twin(x), labels).backward()
    logits, penalty = GuidedGradientRegularizer(model, fraction=fraction)(x, labels)
    (F.cross_entropy(logits, labels) + penalty).backward()
    buffers = dict(model.named_buffers())
    for name, value in twin.named_buffers():
        torch.testing.assert_close(buffers[name], value, msg=name)
    assert int(buffers["stem.1.num_batches_tracked"]) == 1
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_fraction_regularises_a_random_subset_and_returns_all_logits():
    model = small_cnn().eval()
    x, labels = torch.rand(8, 3, 12, 12), torch.randint(0, 4, (8,))
    torch.manual_seed(3)
    rows = torch.randperm(8)[:2]
    torch.manual_seed(3)
    reg = GuidedGradientRegularizer(model, weight=1.0, fraction=0.25)
    logits, penalty = reg(x, labels)
    assert logits.shape == (8, 4)
    plain, guided = reference_gradients(model, x[rows], labels[rows])
    torch.testing.assert_close(penalty, REFERENCE_DISTANCES["cosine"](plain, guided).mean())
    logits.sum().backward()  # the logits keep their graph
    assert all(p.grad is not None for p in model.parameters())


def test_weight_zero_still_trains_like_cross_entropy():
    model = small_cnn().eval()
    x, labels = torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    logits, penalty = GuidedGradientRegularizer(model, weight=0.0)(x, labels)
    assert penalty.item() == 0.0
    ours = torch.autograd.grad(F.cross_entropy(logits, labels) + penalty, list(model.parameters()))
    plain = torch.autograd.grad(F.cross_entropy(model(x), labels), list(model.parameters()))
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b)


def test_additional_forward_args_reach_the_model():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.net(x * scale[:, None, None, None])

    model = Scaled().eval()
    x, labels, scale = torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 3]), torch.rand(4) + 0.5
    scaled = x * scale[:, None, None, None]
    _, penalty = GuidedGradientRegularizer(model.net, weight=1.0)(scaled, labels)
    reg = GuidedGradientRegularizer(model, weight=1.0)
    _, with_args = reg(x, labels, additional_forward_args=scale)
    # d/dx = scale * d/d(scaled x) for both gradients: the cosine does not change.
    torch.testing.assert_close(with_args, penalty, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    _, subset = GuidedGradientRegularizer(model, weight=1.0, fraction=0.5)(x, labels, scale)
    assert torch.isfinite(subset)


def test_an_exception_midway_leaves_no_hook_or_mode_behind():
    model = small_cnn().train()
    reg = GuidedGradientRegularizer(model, distance=lambda g, gg: torch.zeros(7), fraction=0.5)
    x = torch.rand(4, 3, 12, 12)
    with untouched(model, x, buffers=False), pytest.raises(ValueError, match="one loss per"):
        reg(x, torch.tensor([0, 1, 2, 3]))
    assert len(torch.overrides._get_current_function_mode_stack()) == 0
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert_no_hooks(model)


def test_an_exception_in_the_subset_pass_restores_batchnorm_tracking():
    model = small_cnn().train()
    calls = []

    def fail_on_the_subset_pass(module, args):
        calls.append(args[0].shape[0])
        if len(calls) == 2:  # the first forward is the full batch, the second the subset
            raise RuntimeError("boom in the subset pass")

    handle = model.register_forward_pre_hook(fail_on_the_subset_pass)
    x = torch.rand(4, 3, 12, 12)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            GuidedGradientRegularizer(model, fraction=0.5)(x, torch.tensor([0, 1, 2, 3]))
    finally:
        handle.remove()
    assert calls == [4, 2]
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert len(torch.overrides._get_current_function_mode_stack()) == 0
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": -1.0}, "weight"),
        ({"distance": "cos"}, "distance"),
        ({"distance": 3}, "distance"),
        ({"target": "best"}, "target"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GuidedGradientRegularizer(small_cnn(), **kwargs)


def test_bad_models_are_refused():
    with pytest.raises(TypeError, match="model"):
        GuidedGradientRegularizer(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="_orig_mod"):
        GuidedGradientRegularizer(torch.compile(small_cnn()), mode="double_backprop")
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with untouched(no_relu), pytest.raises(ValueError, match="no ReLU"):
        GuidedGradientRegularizer(no_relu)(torch.rand(2, 12), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (torch.tensor([0.0, 1.0]), TypeError, "labels"),
        (torch.tensor([0, 1, 2]), ValueError, "labels"),
        (torch.tensor([0, 4]), ValueError, r"\[0, 3\]"),
        (torch.tensor([-1, 0]), ValueError, r"\[0, 3\]"),
        ([0, 1], TypeError, "labels"),
    ],
)
def test_bad_labels_are_refused(labels, error, match):
    model = small_cnn().eval()
    x = torch.rand(2, 3, 12, 12)
    with untouched(model, x), pytest.raises(error, match=match):
        GuidedGradientRegularizer(model)(x, labels)


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="inputs"):
        GuidedGradientRegularizer(small_cnn())(
            torch.zeros(2, 3, 8, 8, dtype=torch.long), torch.tensor([0, 1])
        )


def test_works_as_the_loss_hook_of_train_classifier():
    model = small_cnn()
    reference = copy.deepcopy(model)
    images, labels = torch.rand(8, 3, 12, 12), torch.randint(0, 4, (8,))
    reg = GuidedGradientRegularizer(model, weight=0.05)
    history = train_classifier(model, TensorDataset(images, labels), epochs=1, batch_size=8,
                               lr=1e-2, progress=False, loss=with_cross_entropy(reg))
    assert reg.last_cosine is not None and torch.isfinite(reg.last_cosine)
    outputs = {}

    def regularized_loss():
        logits, penalty = GuidedGradientRegularizer(reference, weight=0.05)(images, labels)
        outputs["logits"] = logits.detach()
        return F.cross_entropy(logits, labels) + penalty

    loss = hand_written_step(reference, regularized_loss, lr=1e-2)
    assert history[0]["loss"] == pytest.approx(loss, rel=1e-5)
    logits = outputs["logits"]
    expected_accuracy = float((logits.argmax(1) == labels).float().mean())
    assert history[0]["accuracy"] == pytest.approx(expected_accuracy)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=name)


def test_runs_under_autocast(device):
    model = small_cnn(device).train()
    x, labels = torch.rand(4, 3, 12, 12, device=device), torch.tensor([0, 1, 2, 3], device=device)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        logits, penalty = GuidedGradientRegularizer(model)(x, labels)
        loss = F.cross_entropy(logits, labels) + penalty
    assert logits.dtype == dtype
    loss.backward()
    assert torch.isfinite(penalty) and 0 <= penalty <= 2 * 7.5e-3
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_repr_names_the_settings():
    text = repr(GuidedGradientRegularizer(small_cnn(), distance="l1", fraction=0.5))
    assert "distance='l1'" in text and "fraction=0.5" in text


def batch_statistics_frozen_copy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """An eval-mode copy whose BatchNorm layers normalise with ``x``'s batch statistics.

    Its forward values equal the train-mode ones on ``x``, and its input gradients are
    per-example: the independent reference for train-mode regularisation.
    """
    frozen = copy.deepcopy(model)
    stats = {}

    def keep(name):
        def hook(module, args, output):
            inp = args[0].detach()
            dims = [0, *range(2, inp.dim())]
            stats[name] = (inp.mean(dims), inp.var(dims, correction=0))

        return hook

    handles = [
        m.register_forward_hook(keep(n))
        for n, m in frozen.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    frozen.train()
    with torch.no_grad():
        frozen(x)
    for handle in handles:
        handle.remove()
    for name, module in frozen.named_modules():
        if name in stats:
            module.running_mean.copy_(stats[name][0])
            module.running_var.copy_(stats[name][1])
    return frozen.eval()


def test_train_mode_gradients_are_per_example_with_batch_statistics_held():
    model = small_cnn().train()
    x, labels = torch.rand(6, 3, 12, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    frozen = batch_statistics_frozen_copy(model, x)
    logits, penalty = GuidedGradientRegularizer(model, weight=1.0)(x, labels)
    torch.testing.assert_close(logits, frozen(x), rtol=1e-4, atol=1e-5)
    plain, guided = reference_gradients(frozen, x, labels)
    expected = REFERENCE_DISTANCES["cosine"](plain, guided).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-5)
    # Without holding the statistics, other examples' scores leak into each gradient.
    xr = x.clone().requires_grad_(True)
    coupled = torch.autograd.grad(copy.deepcopy(model)(xr).gather(1, labels[:, None]).sum(), xr)[0]
    assert not torch.allclose(coupled, plain, rtol=1e-2, atol=1e-4)


# ---------------------------------------------------------------- the guided rule


def _silu_reference(model: nn.Sequential, x: torch.Tensor, classes: torch.Tensor, gated: bool):
    """Guided gradient of ``Linear -> SiLU -> Linear`` by hand: ``W1^T (s'(z) [1(z>0)] W2_t^+)``."""
    first, last = model[1], model[3]
    z = x.flatten(1) @ first.weight.T + first.bias
    sig = torch.sigmoid(z)
    slope = sig * (1 + z * (1 - sig))  # d silu / dz
    upstream = last.weight[classes].clamp_min(0)
    local = slope * (z > 0) if gated else slope
    return ((local * upstream) @ first.weight).reshape(x.shape)


@pytest.mark.parametrize("mode", ["double_backprop", "finite_difference"])
def test_rule_chooses_the_guided_target_on_a_silu_model(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.SiLU(), nn.Linear(10, 3))
    model = model.double().eval()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    targets = {}
    for rule in ("gated", "ungated"):

        def recording(g, g_guided, rule=rule):
            targets[rule] = g_guided.detach().clone()
            return 1 - F.cosine_similarity(g.flatten(1), g_guided.flatten(1))

        reg = GuidedGradientRegularizer(model, weight=1.0, distance=recording, mode=mode,
                                        rule=rule)
        reg(x, labels)
        torch.testing.assert_close(targets[rule], _silu_reference(model, x, labels,
                                                                  gated=rule == "gated"))
    assert not torch.allclose(targets["gated"], targets["ungated"])  # negative z pass


def test_rule_is_validated_and_shown():
    model = small_cnn()
    assert GuidedGradientRegularizer(model).rule == "gated"
    assert "rule='ungated'" in repr(GuidedGradientRegularizer(model, rule="ungated"))
    with pytest.raises(ValueError, match="rule must be one of"):
        GuidedGradientRegularizer(model, rule="relu")
    with pytest.raises(TypeError, match="rule must be a string"):
        GuidedGradientRegularizer(model, rule=None)
