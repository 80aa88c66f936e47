"""ReLU hook switching: guided gradients equal Captum's, functional ReLUs too, nothing leaks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop
from torch import nn

from captum_regularized._internal.guided_relu import (
    GUIDED_RULES,
    SUPPORTED_ACTIVATIONS,
    GuidedActivationSwitch,
    check_not_compiled,
    guided_and_plain_gradients,
    guided_forward,
    recording_activations,
)
from captum_regularized.models import SimpleCNN
from tests.guided_nets import twin_nets
from tests.model_checks import assert_no_hooks, untouched


def captum_guided(model: nn.Module, inputs: torch.Tensor, target) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GuidedBackprop(model).attribute(inputs.clone(), target=target)


def plain_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = inputs.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)[0]


def function_modes_active() -> int:
    return len(torch.overrides._get_current_function_mode_stack())


class ReusedReLU(nn.Module):
    """One ReLU module applied three times."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.a(x))
        h = self.relu(self.b(h) - h)
        return self.c(self.relu(h))


@pytest.mark.parametrize("train", [False, True])
def test_guided_equals_captum_on_simple_cnn(device, train):
    model = SimpleCNN(5, width=4).to(device).train(train)
    x = torch.rand(3, 3, 16, 16, device=device)
    target = torch.tensor([1, 0, 4], device=device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, plain, guided = guided_and_plain_gradients(model, x, target)
    model.load_state_dict(before)  # Captum's forward sees the same BatchNorm buffers
    torch.testing.assert_close(guided, captum_guided(model, x, target))
    model.load_state_dict(before)
    torch.testing.assert_close(plain, plain_gradient(model, x, target))
    assert not torch.allclose(plain, guided)


def test_guided_equals_captum_on_resnet18_with_inplace_relus():
    model = torchvision.models.resnet18(num_classes=10).eval()
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    x = torch.rand(2, 3, 32, 32)
    _, _, guided = guided_and_plain_gradients(model, x, [3, 7])
    torch.testing.assert_close(guided, captum_guided(model, x, [3, 7]))


def test_guided_equals_captum_with_a_reused_relu_module():
    model = ReusedReLU()
    x = torch.randn(5, 6)
    _, plain, guided = guided_and_plain_gradients(model, x, 2)
    torch.testing.assert_close(guided, captum_guided(model, x, 2))
    assert not torch.allclose(plain, guided)


def test_functional_relus_get_the_same_target_as_their_module_twin():
    modules, functional = twin_nets()
    x = torch.randn(4, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 1])
    _, plain_f, guided_f = guided_and_plain_gradients(functional, x, target)
    _, plain_m, guided_m = guided_and_plain_gradients(modules, x, target)
    torch.testing.assert_close(guided_f, guided_m)
    torch.testing.assert_close(guided_m, captum_guided(modules, x, target))
    torch.testing.assert_close(plain_f, plain_m)
    # Captum's module hooks miss functional ReLUs and silently return the plain gradient.
    torch.testing.assert_close(captum_guided(functional, x, target), plain_f)
    assert not torch.allclose(guided_f, plain_f)


RELU_FORMS = {
    "F.relu": F.relu,
    "F.relu(inplace)": lambda h: F.relu(h, inplace=True),
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu": torch.Tensor.relu,
    "Tensor.relu_": torch.Tensor.relu_,
}


@pytest.mark.parametrize("form", sorted(RELU_FORMS))
def test_every_functional_relu_form_gets_the_guided_rule(form):
    relu = RELU_FORMS[form]

    class OneForm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(relu(self.a(x) * 1.0))  # * 1.0: in-place forms need a non-leaf

    model = OneForm()
    twin = nn.Sequential(model.a, nn.ReLU(), model.b)
    x = torch.randn(5, 6)
    target = torch.tensor([0, 2, 1, 1, 0])
    _, plain, guided = guided_and_plain_gradients(model, x, target)
    torch.testing.assert_close(guided, captum_guided(twin, x, target))
    torch.testing.assert_close(plain, plain_gradient(twin, x, target))
    assert not torch.allclose(guided, plain)


def test_target_none_means_the_predicted_class():
    model = ReusedReLU()
    x = torch.randn(5, 6)
    logits, plain, guided = guided_and_plain_gradients(model, x, None)
    predicted = logits.argmax(1)
    torch.testing.assert_close(guided, captum_guided(model, x, predicted))
    torch.testing.assert_close(plain, plain_gradient(model, x, predicted))


def _create_graph_gradients(model: nn.Module):
    """``(plain, guided, logits)`` with ``create_graph=True``, after checking that a later
    backward pass through the logits and the plain gradient is the plain one (the hooks
    left on the graph are switched off), against autograd on the same model."""
    x = torch.randn(4, 6)
    target = torch.tensor([0, 2, 1, 1])
    logits, plain, guided = guided_and_plain_gradients(model, x, target, create_graph=True)
    ours = torch.autograd.grad(logits.sum() + plain.square().sum(), list(model.parameters()))
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr, create_graph=True)
    reference = torch.autograd.grad(out.sum() + g.square().sum(), list(model.parameters()))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    return plain, guided, logits


def test_create_graph_keeps_a_differentiable_plain_gradient_and_inert_hooks():
    plain, guided, logits = _create_graph_gradients(ReusedReLU())
    assert plain.requires_grad and not guided.requires_grad and logits.requires_grad


def test_without_create_graph_the_logits_come_back_detached():
    logits, plain, _ = guided_and_plain_gradients(ReusedReLU(), torch.randn(2, 6), 0)
    assert not logits.requires_grad and not plain.requires_grad


def test_inputs_and_model_left_untouched_and_no_mode_left():
    model = SimpleCNN(3, width=4).eval()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with untouched(model, x):
        guided_and_plain_gradients(model, x, 1, create_graph=True)
    assert function_modes_active() == 0
    assert x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_a_model_without_relu_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid())
    x = torch.randn(3, 4)
    with untouched(model, x), pytest.raises(ValueError, match="no ReLU") as error:
        guided_and_plain_gradients(model, x, 0)
    assert function_modes_active() == 0
    for name in SUPPORTED_ACTIVATIONS.split(", "):
        assert name in str(error.value)


def test_an_exception_in_the_forward_pass_leaves_no_mode_active():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.relu(x)
            raise RuntimeError("broken forward")

    model = Broken()
    with untouched(model), pytest.raises(RuntimeError, match="broken forward"):
        guided_and_plain_gradients(model, torch.randn(2, 3), 0)
    assert function_modes_active() == 0
    assert_no_hooks(model)


def test_a_compiled_module_is_refused_with_the_way_out():
    compiled = torch.compile(SimpleCNN(2, width=4))
    with pytest.raises(TypeError, match="_orig_mod"):
        guided_and_plain_gradients(compiled, torch.rand(1, 3, 8, 8), 0)
    wrapper = nn.Sequential(compiled)
    with pytest.raises(TypeError, match=r"forward_func\.0 is a torch.compile"):
        guided_and_plain_gradients(wrapper, torch.rand(1, 3, 8, 8), 0)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, dtype=torch.long), [torch.zeros(2, 3)]])
def test_bad_inputs_raise_type_errors(bad):
    with pytest.raises(TypeError, match="inputs"):
        guided_and_plain_gradients(ReusedReLU(), bad, 0)


def test_switch_applies_the_rule_only_inside_guided_block():
    x = torch.tensor([[-1.0, 2.0, 3.0]], requires_grad=True)
    weights = torch.tensor([5.0, -7.0, 11.0])
    switch = GuidedActivationSwitch()
    with recording_activations(switch):
        y = (torch.relu(x) * weights).sum()
    assert switch.num_activations == 1
    with switch.guided():
        (guided,) = torch.autograd.grad(y, x, retain_graph=True)
    (plain,) = torch.autograd.grad(y, x)
    assert guided.tolist() == [[0.0, 0.0, 11.0]]
    assert plain.tolist() == [[0.0, -7.0, 11.0]]
    assert not switch.active


def test_per_example_only_changes_train_mode_batchnorm_gradients():
    model = SimpleCNN(3, width=4).eval()
    x = torch.rand(4, 3, 8, 8)
    coupled = guided_and_plain_gradients(model, x, 1)
    separate = guided_and_plain_gradients(model, x, 1, per_example=True)
    for a, b in zip(coupled, separate):  # eval mode: the statistics are constants anyway
        torch.testing.assert_close(a, b)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    coupled = guided_and_plain_gradients(model, x, 1)
    after_coupled = {k: v.clone() for k, v in model.named_buffers()}
    model.load_state_dict(state)
    separate = guided_and_plain_gradients(model, x, 1, per_example=True)
    torch.testing.assert_close(separate.logits, coupled.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dict(model.named_buffers()), after_coupled)  # stats moved once
    assert not torch.allclose(separate.plain, coupled.plain, rtol=1e-2, atol=1e-4)


def test_a_module_compiled_in_place_is_refused():
    model = SimpleCNN(2, width=4)
    model.compile()
    with pytest.raises(TypeError, match=r"compiled in place"):
        guided_and_plain_gradients(model, torch.rand(1, 3, 8, 8), 0)


# ------------------------------------------------------------ the other activations


class SmoothMLP(nn.Module):
    """SiLU, a GELU reused, Hardtanh and an in-place ELU: the rule's non-ReLU cases."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.a.weight.mul_(4.0)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gelu(F.silu(self.a(x)))
        h = F.elu(self.b(h), inplace=True) + F.hardtanh(h)
        return self.c(self.gelu(h))


def test_the_switch_records_every_family():
    switch = GuidedActivationSwitch()
    with recording_activations(switch):
        SmoothMLP()(torch.randn(2, 6, requires_grad=True))
    assert switch.families == {"SiLU": 1, "GELU": 2, "ELU": 1, "Hardtanh": 1}
    assert switch.num_activations == 5


def test_relu6_written_as_hardtanh_is_recognised_without_a_gate():
    x = torch.randn(4, 6, requires_grad=True)
    switch = GuidedActivationSwitch()
    with recording_activations(switch):
        nn.ReLU6()(x)
        F.hardtanh(x, min_val=0.0, max_val=6.0)
        F.hardtanh(x, 0.0, 2.0)
        nn.Hardtanh()(x)
    assert switch.families == {"ReLU6": 2, "Hardtanh": 2}


def test_create_graph_keeps_a_differentiable_plain_gradient_on_smooth_activations():
    plain, guided, _ = _create_graph_gradients(SmoothMLP())
    assert not torch.allclose(plain.detach(), guided)


def test_the_ungated_rule_keeps_the_negative_side_of_smooth_activations():
    model = nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 3))
    x, target = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    _, _, gated = guided_and_plain_gradients(model, x, target, rule="gated")
    _, _, ungated = guided_and_plain_gradients(model, x, target, rule="ungated")
    z = model[0](x).detach()
    up = model[2].weight[target].clamp_min(0)  # max(grad_out, 0) at the ELU's output
    slope = torch.where(z > 0, 1.0, torch.exp(z))
    torch.testing.assert_close(gated, (slope * (z > 0) * up) @ model[0].weight.detach())
    torch.testing.assert_close(ungated, (slope * up) @ model[0].weight.detach())
    assert sorted(GUIDED_RULES) == ["gated", "ungated"]


@pytest.mark.parametrize("rule, error", [("deconvnet", ValueError), (None, TypeError)])
def test_an_unknown_rule_is_named(rule, error):
    with pytest.raises(error, match="rule"):
        guided_and_plain_gradients(ReusedReLU(), torch.randn(2, 6), 0, rule=rule)
    with pytest.raises(error, match="rule"):
        GuidedActivationSwitch(rule)


def test_guided_forward_refuses_a_model_that_writes_into_its_input():
    class WritesInput(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.mul_(2.0)
            return F.relu(x).sum(1, keepdim=True)

    leaf = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="in place"):
        guided_forward(WritesInput(), (leaf,), None, GuidedActivationSwitch())
    assert function_modes_active() == 0


def test_check_not_compiled_says_why():
    compiled = torch.compile(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"model is a torch.compile'd module; because\. Pass"):
        check_not_compiled(compiled, reason="because")
