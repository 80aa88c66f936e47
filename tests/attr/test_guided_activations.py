"""The guided rule on every activation it knows, against a hand-written backward pass.

For ``y = sigma(z)`` the rule is ``grad_in = sigma'(z) * 1[z > 0] * max(grad_out, 0)``
(``rule="gated"``) or ``sigma'(z) * max(grad_out, 0)`` (``rule="ungated"``). The
references below write ``sigma'`` in closed form and run the backward pass of a small
two-activation network by hand (no autograd), for the module, functional and in-place
forms of each activation; module and functional twins must agree, and Captum's
``GuidedBackprop`` (which only knows ``nn.ReLU`` modules) is shown to return the plain
gradient on them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from captum_regularized import attr
from captum_regularized._internal.guided_relu import (
    GUIDED_ACTIVATIONS,
    SUPPORTED_ACTIVATIONS,
    GuidedActivationSwitch,
    guided_and_plain_gradients,
    recording_activations,
)
from tests.guided_nets import ThreeConvNet
from tests.model_checks import untouched

Fn = Callable[[torch.Tensor], torch.Tensor]

SELU_LAMBDA, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772
PRELU_WEIGHT = torch.tensor([0.3])
RRELU_LOWER, RRELU_UPPER = 0.1, 0.3


def _gelu_tanh_slope(z: torch.Tensor) -> torch.Tensor:
    k = math.sqrt(2 / math.pi)
    t = torch.tanh(k * (z + 0.044715 * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t**2) * k * (1 + 3 * 0.044715 * z**2)


def _gelu_slope(z: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return cdf + z * pdf


def _mish_slope(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(torch.log1p(torch.exp(z)))
    return t + z * (1 - t**2) * torch.sigmoid(z)


def _silu_slope(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _where(z: torch.Tensor, positive: torch.Tensor | float, negative: torch.Tensor | float):
    return torch.where(z > 0, torch.as_tensor(positive, dtype=z.dtype),
                       torch.as_tensor(negative, dtype=z.dtype))


@dataclass(frozen=True)
class Activation:
    """An activation's module, functional and in-place forms and its slope ``sigma'``."""

    module: Callable[[], nn.Module]
    functional: Fn
    inplace: Fn | None
    slope: Fn


ACTIVATIONS: dict[str, Activation] = {
    "ReLU": Activation(nn.ReLU, F.relu, torch.relu_, lambda z: (z > 0).to(z.dtype)),
    "ReLU6": Activation(nn.ReLU6, F.relu6, lambda z: F.relu6(z, inplace=True),
                        lambda z: ((z > 0) & (z < 6)).to(z.dtype)),
    "Hardtanh": Activation(lambda: nn.Hardtanh(-0.5, 2.0), lambda z: F.hardtanh(z, -0.5, 2.0),
                           lambda z: F.hardtanh_(z, -0.5, 2.0),
                           lambda z: ((z > -0.5) & (z < 2.0)).to(z.dtype)),
    "LeakyReLU": Activation(lambda: nn.LeakyReLU(0.1), lambda z: F.leaky_relu(z, 0.1),
                            lambda z: F.leaky_relu_(z, 0.1), lambda z: _where(z, 1.0, 0.1)),
    "PReLU": Activation(lambda: nn.PReLU(init=float(PRELU_WEIGHT)),
                        lambda z: F.prelu(z, PRELU_WEIGHT), None,
                        lambda z: _where(z, 1.0, float(PRELU_WEIGHT))),
    "RReLU": Activation(lambda: nn.RReLU(RRELU_LOWER, RRELU_UPPER).eval(),
                        lambda z: F.rrelu(z, RRELU_LOWER, RRELU_UPPER, training=False),
                        lambda z: F.rrelu_(z, RRELU_LOWER, RRELU_UPPER, training=False),
                        lambda z: _where(z, 1.0, (RRELU_LOWER + RRELU_UPPER) / 2)),
    "ELU": Activation(lambda: nn.ELU(0.8), lambda z: F.elu(z, 0.8),
                      lambda z: F.elu(z, 0.8, inplace=True),
                      lambda z: _where(z, 1.0, 0.8 * torch.exp(z))),
    "CELU": Activation(lambda: nn.CELU(0.7), lambda z: F.celu(z, 0.7),
                       lambda z: F.celu_(z, 0.7), lambda z: _where(z, 1.0, torch.exp(z / 0.7))),
    "SELU": Activation(nn.SELU, F.selu, F.selu_,
                       lambda z: _where(z, SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA * torch.exp(z))),
    "SiLU": Activation(nn.SiLU, F.silu, lambda z: F.silu(z, inplace=True), _silu_slope),
    "Hardswish": Activation(nn.Hardswish, F.hardswish, lambda z: F.hardswish(z, inplace=True),
                            lambda z: torch.where(z < -3, 0.0, torch.where(z > 3, 1.0,
                                                                           (2 * z + 3) / 6))),
    "GELU": Activation(nn.GELU, F.gelu, None, _gelu_slope),
    "GELU-tanh": Activation(lambda: nn.GELU(approximate="tanh"),
                            lambda z: F.gelu(z, approximate="tanh"), None, _gelu_tanh_slope),
    "Mish": Activation(nn.Mish, F.mish, lambda z: F.mish(z, inplace=True), _mish_slope),
    "Softplus": Activation(lambda: nn.Softplus(beta=2.0, threshold=3.0),
                           lambda z: F.softplus(z, beta=2.0, threshold=3.0), None,
                           lambda z: torch.where(2 * z > 3, 1.0, torch.sigmoid(2 * z))),
}

FORMS = [
    (name, form)
    for name, activation in ACTIVATIONS.items()
    for form in ("module", "functional", "inplace")
    if form != "inplace" or activation.inplace is not None
]


class TwoActivations(nn.Module):
    """``x -> a -> sigma -> b -> sigma -> c``; ``sigma`` in one of its forms."""

    def __init__(self, activation: Fn | nn.Module, second: Fn | nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = nn.Linear(6, 10), nn.Linear(10, 10), nn.Linear(10, 3)
        with torch.no_grad():  # pre-activations spread over [-6, 6]: every branch is hit
            self.a.weight.mul_(6.0)
            self.b.weight.mul_(5.0)
        self.first = activation
        self.second = activation if second is None else second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(self.a(x))
        return self.c(self.second(self.b(h)))


def _form(activation: Activation, form: str) -> Fn | nn.Module:
    if form == "module":
        return activation.module()
    if form == "functional":
        return activation.functional
    assert activation.inplace is not None
    return activation.inplace


def hand_written_guided(
    model: TwoActivations, activation: Activation, x: torch.Tensor, target: torch.Tensor,
    gated: bool,
) -> torch.Tensor:
    """The guided backward pass of :class:`TwoActivations`, written out (no autograd)."""
    with torch.no_grad():
        z1 = x @ model.a.weight.T + model.a.bias
        h1 = activation.functional(z1.clone())
        z2 = h1 @ model.b.weight.T + model.b.bias
        grad = model.c.weight[target]  # d score / d (second activation's output)
        for z, weight in ((z2, model.b.weight), (z1, model.a.weight)):
            grad = activation.slope(z) * grad.clamp_min(0)
            if gated:
                grad = grad * (z > 0)
            grad = grad @ weight
    return grad


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(8, 6, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("rule", ["gated", "ungated"])
@pytest.mark.parametrize(("name", "form"), FORMS, ids=[f"{n}-{f}" for n, f in FORMS])
def test_the_rule_matches_the_hand_written_backward(name: str, form: str, rule: str):
    activation = ACTIVATIONS[name]
    model = TwoActivations(_form(activation, form))
    x, target = _inputs()
    expected = hand_written_guided(model, activation, x, target, gated=rule == "gated")
    with untouched(model, x):
        got = attr.GuidedBackprop(model, rule=rule).attribute(x, target=target)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the rule changes the gradient: the plain one differs
    _, plain, guided = guided_and_plain_gradients(model, x, target, rule=rule)
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, guided, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_captum_misses_every_activation_but_relu_modules(name: str):
    """Captum's GuidedBackprop hooks ``nn.ReLU`` only: elsewhere it is the plain gradient."""
    activation = ACTIVATIONS[name]
    model = TwoActivations(activation.module())
    x, target = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = CaptumGuidedBackprop(model).attribute(x.clone(), target=target)
    ours = attr.GuidedBackprop(model).attribute(x, target=target)
    _, plain, _ = guided_and_plain_gradients(model, x, target)
    torch.testing.assert_close(captum, ours if name == "ReLU" else plain)
    assert not torch.allclose(ours, plain, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["ReLU", "ReLU6"])
def test_gated_and_ungated_agree_where_the_slope_vanishes_below_zero(name: str):
    model = TwoActivations(ACTIVATIONS[name].module())
    x, target = _inputs()
    gated = attr.GuidedBackprop(model).attribute(x, target=target)
    ungated = attr.GuidedBackprop(model, rule="ungated").attribute(x, target=target)
    torch.testing.assert_close(gated, ungated)


@pytest.mark.parametrize("name", ["LeakyReLU", "ELU", "SiLU", "GELU", "Softplus"])
def test_gated_and_ungated_differ_elsewhere(name: str):
    model = TwoActivations(ACTIVATIONS[name].module())
    x, target = _inputs()
    gated = attr.GuidedBackprop(model).attribute(x, target=target)
    ungated = attr.GuidedBackprop(model, rule="ungated").attribute(x, target=target)
    assert not torch.allclose(gated, ungated, rtol=1e-3, atol=1e-4)


def test_a_module_reused_twice_gets_the_rule_at_each_call():
    reused = TwoActivations(nn.GELU())
    separate = TwoActivations(nn.GELU(), nn.GELU())
    assert reused.first is reused.second and separate.first is not separate.second
    x, target = _inputs()
    expected = hand_written_guided(reused, ACTIVATIONS["GELU"], x, target, gated=True)
    for model in (reused, separate):
        torch.testing.assert_close(attr.GuidedBackprop(model).attribute(x, target=target),
                                   expected, rtol=1e-4, atol=1e-5)


def test_mixed_forms_in_one_model_give_the_module_twins_answer():
    """A CNN with functional and in-place activations equals its all-module twin."""

    class Modules(ThreeConvNet):
        def __init__(self) -> None:
            super().__init__([nn.ReLU6(), nn.SiLU(), nn.GELU(), nn.Hardswish()], seed=0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relus[0](self.conv1(x))
            h = self.relus[1](self.conv2(h)) + h
            h = self.relus[2](self.conv3(h))
            return self.fc(self.relus[3](h.mean((2, 3))))

    class Functional(Modules):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu6(self.conv1(x), inplace=True)
            h = F.silu(self.conv2(h), inplace=True) + h
            h = F.gelu(self.conv3(h))
            return self.fc(F.hardswish(h.mean((2, 3)), inplace=True))

    modules, functional = Modules().eval(), Functional().eval()
    functional.load_state_dict(modules.state_dict())
    x, target = torch.rand(2, 3, 8, 8), torch.tensor([1, 3])
    for method in (attr.GuidedBackprop, lambda m: attr.GuidedGradCam(m, m.conv3)):
        torch.testing.assert_close(method(functional).attribute(x, target=target),
                                   method(modules).attribute(x, target=target))
    _, plain, guided = guided_and_plain_gradients(modules, x, target)
    assert not torch.allclose(plain, guided)


class _GuidedReLUFunction(torch.autograd.Function):
    """A reference ReLU with the guided backward written by hand."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad.clamp_min(0) * (z > 0)


def test_softmax_layer_norm_and_gates_keep_their_ordinary_backward():
    """Only the ReLU is rectified: the reference has a hand-written guided ReLU and plain
    autograd for softmax, LayerNorm, sigmoid, hardsigmoid and tanh."""

    class Mixed(nn.Module):
        def __init__(self, relu: Fn) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.norm = nn.LayerNorm(8)
            self.relu = relu

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.relu(self.a(x)))
            attention = torch.softmax(h[:, :, None] * h[:, None, :], dim=-1)
            h = (attention @ h[:, :, None])[:, :, 0] * torch.sigmoid(self.b(h))
            return self.c(torch.tanh(h) * F.hardsigmoid(h))

    model, reference = Mixed(F.relu), Mixed(_GuidedReLUFunction.apply)
    x, target = _inputs()
    xr = x.clone().requires_grad_()
    expected = torch.autograd.grad(reference(xr).gather(1, target[:, None]).sum(), xr)[0]
    switch = GuidedActivationSwitch()
    with recording_activations(switch):
        model(x.clone().requires_grad_())
    assert switch.families == {"ReLU": 1}
    torch.testing.assert_close(attr.GuidedBackprop(model).attribute(x, target=target), expected)


def test_an_activation_output_modified_in_place_afterwards_keeps_the_rule():
    class AddInPlace(TwoActivations):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.first(self.a(x))
            h += 1.0  # the rule acts on the gradient of the activation's own output
            return self.c(self.second(self.b(h)))

    class AddOutOfPlace(TwoActivations):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.first(self.a(x)) + 1.0
            return self.c(self.second(self.b(h)))

    x, target = _inputs()
    got = attr.GuidedBackprop(AddInPlace(nn.SiLU())).attribute(x, target=target)
    expected = attr.GuidedBackprop(AddOutOfPlace(nn.SiLU())).attribute(x, target=target)
    torch.testing.assert_close(got, expected)


def test_every_registered_function_is_named_in_the_message():
    names = set(GUIDED_ACTIVATIONS.values())
    assert names == set(SUPPORTED_ACTIVATIONS.split(", "))
    assert {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "SiLU",
            "Hardswish", "GELU", "Mish", "Softplus"} <= names


@pytest.mark.parametrize("method", ["GuidedBackprop", "GuidedGradCam", "gradient_alignment"])
def test_a_model_with_no_known_activation_is_refused_naming_them(method: str):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Sigmoid(),
                          nn.Linear(8, 3), nn.Softmax(dim=1))
    x, target = _inputs()
    with untouched(model, x), pytest.raises(ValueError, match=r"no ReLU.*GELU.*Softplus"):
        if method == "GuidedBackprop":
            attr.GuidedBackprop(model).attribute(x, target=target)
        elif method == "GuidedGradCam":
            attr.GuidedGradCam(model, model[0]).attribute(x, target=target)
        else:
            from captum_regularized.metrics import gradient_alignment

            gradient_alignment(model, x, target)
