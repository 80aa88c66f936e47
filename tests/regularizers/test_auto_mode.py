"""``mode="auto"``, the default of the two penalties on the input gradient.

It runs the exact mode where the model can be differentiated twice and the
finite-difference mode otherwise (MobileNet V3's ``hardsigmoid``, a custom
``@once_differentiable`` function, a compiled model), says so once with a
``UserWarning`` when it falls back, exposes the choice as ``resolved_mode``, and gives
exactly what the explicitly chosen mode gives: the failed exact attempt of the first
call leaves no trace (BatchNorm statistics, random state, ``.grad``).
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from captum_regularized.models import SimpleCNN
from captum_regularized.regularizers import GradientNormPenalty, GuidedGradientRegularizer
from tests.model_checks import untouched
from tests.regularizers.test_finite_difference_mode import CustomActivationNet, batch

FD, EXACT = "finite_difference", "double_backprop"

MAKERS = {
    "guided": lambda model, **kw: GuidedGradientRegularizer(model, weight=0.1, **kw),
    "norm": lambda model, **kw: GradientNormPenalty(model, norm="l1", epsilon=0.01, **kw),
}


def _images(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=generator), torch.tensor([0, 1, 2, 3][:n])


def _mobilenet_v3() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)


def _efficientnet_b0() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.efficientnet_b0(weights=None)


def _step(reg, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, seed: int = 3):
    """One training step from a fixed random state: the penalty, logits, weight gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits, penalty = reg(x, labels)
    (F.cross_entropy(logits, labels) + penalty).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), penalty.detach(), grads, torch.random.get_rng_state()


def _assert_same_step(got, expected) -> None:
    (logits, penalty, grads, rng), (logits2, penalty2, grads2, rng2) = got, expected
    torch.testing.assert_close(logits, logits2, rtol=0, atol=0)
    torch.testing.assert_close(penalty, penalty2, rtol=0, atol=0)
    assert grads.keys() == grads2.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads2[name], rtol=0, atol=0, msg=name)
    assert torch.equal(rng, rng2), "the random state moved differently"


def _assert_trains(penalty: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
    assert penalty.dim() == 0 and torch.isfinite(penalty)
    assert grads, "no parameter got a gradient"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_mobilenet_v3_falls_back_to_finite_differences_once_and_as_if_chosen(kind):
    """hardsigmoid has no double backward: auto gives the finite-difference step exactly,
    in train mode (dropout, BatchNorm), with one warning over two calls."""
    model = _mobilenet_v3().train()
    twin = copy.deepcopy(model)
    x, labels = _images()
    reg = MAKERS[kind](model)
    assert reg.mode == "auto" and reg.resolved_mode is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _step(reg, model, x, labels)
        again = _step(reg, model, x, labels, seed=4)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "mode='finite_difference'" in messages[0] and "NotImplemented" in messages[0]
    assert reg.resolved_mode == FD and reg.mode == "auto"

    explicit = MAKERS[kind](twin, mode=FD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the explicit mode warns of nothing
        expected = _step(explicit, twin, x, labels)
        expected_again = _step(explicit, twin, x, labels, seed=4)
    _assert_trains(got[1], got[2])
    _assert_same_step(got, expected)
    _assert_same_step(again, expected_again)
    # The failed exact attempt moved no BatchNorm statistics: both moved twice, alike.
    after, after_twin = _buffers(model), _buffers(twin)
    for name, value in after.items():
        torch.testing.assert_close(value, after_twin[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_efficientnet_b0_keeps_the_exact_mode(kind):
    model = _efficientnet_b0().eval()
    twin = copy.deepcopy(model)
    x, labels = _images()
    reg = MAKERS[kind](model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the exact mode is kept
        got = _step(reg, model, x, labels)
    assert reg.resolved_mode == EXACT
    _assert_trains(got[1], got[2])
    _assert_same_step(got, _step(MAKERS[kind](twin, mode=EXACT), twin, x, labels))


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_relu_cnn_keeps_the_exact_mode_and_logs_it(kind, caplog):
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=4, width=4).train()
    twin = copy.deepcopy(model)
    x, labels = _images(size=16)
    reg = MAKERS[kind](model)
    with warnings.catch_warnings(), caplog.at_level(
        logging.INFO, logger="captum_regularized.regularizers"
    ):
        warnings.simplefilter("error")
        got = _step(reg, model, x, labels)
        again = _step(reg, model, x, labels, seed=4)
    assert reg.resolved_mode == EXACT
    chosen = [r.getMessage() for r in caplog.records if "mode='double_backprop'" in r.getMessage()]
    assert len(chosen) == 1, caplog.records
    explicit = MAKERS[kind](twin, mode=EXACT)
    _assert_same_step(got, _step(explicit, twin, x, labels))
    _assert_same_step(again, _step(explicit, twin, x, labels, seed=4))


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_once_differentiable_function_falls_back_and_leaves_no_trace(kind):
    """The obstacle found on the gradient's graph (no autograd error): the failed
    attempt writes no .grad, and the result is the explicit mode's."""
    model = CustomActivationNet(once=True).double()
    twin = copy.deepcopy(model)
    x, labels = batch()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)  # the attempt must not touch existing .grad
    reg = MAKERS[kind](model)
    with untouched(model, x, labels), pytest.warns(UserWarning, match="OnceSoftplus"):
        logits, penalty = reg(x, labels)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    expected_logits, expected = MAKERS[kind](twin, mode=FD)(x, labels)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(penalty, expected, rtol=0, atol=0)
    got_grads = torch.autograd.grad(penalty, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(twin.parameters()))
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_compiled_model_resolves_to_finite_differences_at_once(kind):
    torch._dynamo.reset()
    compiled = torch.compile(SimpleCNN(num_classes=4, width=4), backend="aot_eager")
    with pytest.warns(UserWarning, match="torch.compile'd.*mode='finite_difference'"):
        reg = MAKERS[kind](compiled)
    assert reg.resolved_mode == FD and reg.mode == "auto"
    with pytest.raises(TypeError, match="_orig_mod"):  # the explicit exact mode still refuses
        MAKERS[kind](compiled, mode=EXACT)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_call_failing_for_another_reason_chooses_nothing(kind):
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=4, width=4)
    x, _ = _images(size=16)
    reg = MAKERS[kind](model)
    with untouched(model, x), pytest.raises(ValueError, match="labels"):
        reg(x, torch.tensor([0, 1, 2, 9]))  # class 9 of 4
    assert reg.resolved_mode is None


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_mode_settings(kind):
    model = SimpleCNN(num_classes=4, width=4)
    reg = MAKERS[kind](model, fd_step=0.01)  # used if auto falls back
    assert reg.mode == "auto" and reg.fd_step == 0.01
    assert MAKERS[kind](model, mode=FD).resolved_mode == FD
    assert MAKERS[kind](model, mode=EXACT).resolved_mode == EXACT
    with pytest.raises(ValueError, match="fd_step"):
        MAKERS[kind](model, mode=EXACT, fd_step=0.01)
    with pytest.raises(ValueError, match="'auto'"):
        MAKERS[kind](model, mode="exact")
