"""``mode="finite_difference"`` of the two input-gradient penalties, and what the exact
mode gained with it (math attention, clear double-backward errors, ``grad_scaler``).

References are written here with plain autograd (double backprop of a hand-written
penalty) and Captum's ``GuidedBackprop``; the package's exact mode is used as the
reference only where it is itself checked against such a reference elsewhere (the
per-example train-mode BatchNorm semantics).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop
from torch import nn
from torch.autograd.function import once_differentiable

from captum_regularized.models import SimpleCNN
from captum_regularized.regularizers import GradientNormPenalty, GuidedGradientRegularizer
from tests.model_checks import assert_no_hooks, untouched

FD = "finite_difference"

# ---------------------------------------------------------------- models and references


class AlwaysOnReLU(nn.Module):
    """A ReLU that never switches (input > 0): the guided rule applies, the net is smooth.

    An ``nn.ReLU`` module, so that Captum's ``GuidedBackprop`` (the reference) sees it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + 3.0)


def smooth_cnn(classes: int = 4, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.Conv2d(5, 5, 3, padding=1), AlwaysOnReLU(),
        nn.Dropout(dropout), nn.Conv2d(5, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, classes),
    ).double()


def batch(n: int = 4, size: int = 6, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=gen).to(dtype)
    return x, torch.arange(n) % 4


def flat_gradient(loss: torch.Tensor, params: list[torch.Tensor], **kwargs) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, **kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def conjugate(g: torch.Tensor, mask: torch.Tensor | None, **s) -> torch.Tensor:
    """R*(g_i) per example, written from the formulas."""
    norm = s["norm"]
    flat = g.flatten(1)
    eps = s["epsilon"]
    if norm == "l1":
        return eps * flat.abs().sum(1)
    if norm == "elastic_net":
        return eps * flat.abs().sum(1) + s["epsilon2"] * flat.square().sum(1)
    if norm == "group":
        k = s["group_size"]
        patches = g.unfold(2, k, k).unfold(3, k, k)  # sizes divide: no edge patches
        return eps * patches.square().sum((-1, -2)).sqrt().flatten(1).sum(1)
    weighted = ((1 - 2 * mask) * g.square()).flatten(1).sum(1)
    return eps * weighted / flat.norm(dim=1)


NORMS = {
    "l1": {"norm": "l1", "epsilon": 0.05},
    "elastic_net": {"norm": "elastic_net", "epsilon": 0.02, "epsilon2": 0.3},
    "group": {"norm": "group", "epsilon": 0.1, "group_size": 3},
    "gaze": {"norm": "gaze", "epsilon": 0.1},
}


def norm_penalty_reference(model, x, labels, mask, settings) -> torch.Tensor:
    """mean_i R*(grad_x sum CE) with the gradient kept in the graph (double backprop)."""
    xr = x.clone().requires_grad_(True)
    losses = F.cross_entropy(model(xr), labels, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), xr, create_graph=True)
    return conjugate(g, mask, **settings).mean()


def guided_reference(model, x, labels, weight: float, distance: str) -> torch.Tensor:
    """weight * mean distance(dS/dx, GuidedBackprop), by autograd and Captum."""
    xr = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(
        model(xr).gather(1, labels[:, None]).sum(), xr, create_graph=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guided = GuidedBackprop(model).attribute(x.clone(), target=labels).detach()
    a, b = plain.flatten(1), guided.flatten(1)
    if distance == "cosine":
        per_example = 1 - F.cosine_similarity(a, b)
    else:
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        per_example = (a - b).abs().mean(1) if distance == "l1" else (a - b).square().mean(1)
    return weight * per_example.mean()


# ---------------------------------------------------------------- agreement with double backprop


@pytest.mark.parametrize("norm", list(NORMS))
def test_norm_penalty_matches_double_backprop_in_float64(norm):
    model = smooth_cnn()
    x, labels = batch()
    mask = (torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    mask = mask if norm == "gaze" else None
    params = list(model.parameters())
    reference = norm_penalty_reference(model, x, labels, mask, NORMS[norm])
    expected = flat_gradient(reference, params)
    for fd_step, tolerance in ((1e-7, 1e-4), (None, 2e-2)):  # None: the default, 0.02
        pen = GradientNormPenalty(model, **NORMS[norm], mode=FD, fd_step=fd_step)
        with untouched(model, x, labels):
            logits, penalty = pen(x, labels, mask=mask)
        torch.testing.assert_close(penalty, reference.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(logits, model(x))
        assert relative_error(flat_gradient(penalty, params), expected) < tolerance, fd_step


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("distance", ["cosine", "l1", "mse"])
def test_guided_penalty_matches_double_backprop_in_float64(distance, fraction):
    model = smooth_cnn()
    x, labels = batch(n=6)
    params = list(model.parameters())
    torch.manual_seed(3)
    rows = torch.randperm(6)[: round(6 * fraction)]  # the subset the regularizer draws
    reference = guided_reference(model, x[rows], labels[rows], 0.7, distance)
    expected = flat_gradient(reference, params)
    torch.manual_seed(3)
    reg = GuidedGradientRegularizer(model, weight=0.7, distance=distance, fraction=fraction,
                                    mode=FD, fd_step=1e-7)
    logits, penalty = reg(x, labels)
    torch.testing.assert_close(penalty, reference.detach(), rtol=1e-10, atol=1e-14)
    assert logits.shape == (6, 4)
    assert relative_error(flat_gradient(penalty, params), expected) < 1e-4


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_train_mode_batchnorm_keeps_the_per_example_gradient_of_the_exact_mode(fraction):
    # The exact mode holds the batch statistics constant in x (checked against an
    # eval-mode copy in test_guided_gradient.py); a perturbed pass normalising with its
    # own statistics would estimate the coupled gradient instead (cosine ~0.1 here).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4), AlwaysOnReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4),
    ).double().train()
    twin = copy.deepcopy(model)
    x, labels = batch(n=8, size=8)
    params = list(model.parameters())
    torch.manual_seed(4)
    _, exact = GuidedGradientRegularizer(model, weight=1.0, fraction=fraction)(x, labels)
    expected = flat_gradient(exact, params)
    model.load_state_dict(twin.state_dict())  # undo the exact call's statistics update
    torch.manual_seed(4)
    reg = GuidedGradientRegularizer(model, weight=1.0, fraction=fraction, mode=FD, fd_step=1e-8)
    logits, penalty = reg(x, labels)
    torch.testing.assert_close(penalty, exact.detach(), rtol=1e-10, atol=1e-14)
    assert relative_error(flat_gradient(penalty, params), expected) < 1e-4
    twin_logits = twin(x)  # one plain forward: the running statistics moved exactly once
    for (name, ours), theirs in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name)
    torch.testing.assert_close(logits, twin_logits)


def test_norm_penalty_in_train_mode_keeps_the_batch_coupling_it_defines():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 4)).double().train()
    x, labels = batch(n=6)
    params = list(model.parameters())
    ref_model = copy.deepcopy(model)
    reference = norm_penalty_reference(ref_model, x, labels, None, NORMS["l1"])
    expected = flat_gradient(reference, list(ref_model.parameters()))
    _, penalty = GradientNormPenalty(model, **NORMS["l1"], mode=FD, fd_step=1e-8)(x, labels)
    assert relative_error(flat_gradient(penalty, params), expected) < 1e-4
    assert int(model[1].num_batches_tracked) == 1


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_dropout_masks_are_shared_by_every_pass(kind):
    model = smooth_cnn(dropout=0.3).train()
    x, labels = batch()
    params = list(model.parameters())
    make = {
        "guided": lambda **kw: GuidedGradientRegularizer(model, weight=0.5, **kw),
        "penalty": lambda **kw: GradientNormPenalty(model, **NORMS["elastic_net"], **kw),
    }[kind]
    torch.manual_seed(7)
    logits_exact, exact = make()(x, labels)
    after_exact = torch.rand(3)
    torch.manual_seed(7)
    logits, penalty = make(mode=FD, fd_step=1e-7)(x, labels)
    # Same dropout masks as the exact mode's single forward pass, and the random state
    # advanced as by one forward pass.
    torch.testing.assert_close(logits, logits_exact)
    assert torch.equal(torch.rand(3), after_exact)
    torch.testing.assert_close(penalty, exact.detach(), rtol=1e-10, atol=1e-14)
    got, expected = flat_gradient(penalty, params), flat_gradient(exact, params)
    assert relative_error(got, expected) < 1e-4


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_a_module_before_the_model_is_trained_by_the_same_difference(kind):
    # Caller's graph: reg(pre(x), y) trains pre through the difference of grad_x L.
    model = smooth_cnn()
    torch.manual_seed(1)
    pre = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh()).double()
    x, labels = batch()
    params = list(pre.parameters()) + list(model.parameters())
    if kind == "guided":
        ref_logits = model(pre(x))
        reference = guided_reference_on_graph(model, pre(x), labels)
        loss = GuidedGradientRegularizer(model, weight=1.0, mode=FD, fd_step=1e-7)
    else:
        z = pre(x)
        ref_logits = model(z)
        losses = F.cross_entropy(model(z), labels, reduction="none")
        (g,) = torch.autograd.grad(losses.sum(), z, create_graph=True)
        reference = conjugate(g, None, **NORMS["elastic_net"]).mean()
        loss = GradientNormPenalty(model, **NORMS["elastic_net"], mode=FD, fd_step=1e-7)
    expected = flat_gradient(F.cross_entropy(ref_logits, labels) + reference, params)
    logits, penalty = loss(pre(x), labels)
    got = flat_gradient(F.cross_entropy(logits, labels) + penalty, params)
    pre_size = sum(p.numel() for p in pre.parameters())
    assert expected[:pre_size].abs().sum() > 0
    assert relative_error(got[:pre_size], expected[:pre_size]) < 1e-4
    assert relative_error(got, expected) < 1e-4


def guided_reference_on_graph(model, z, labels) -> torch.Tensor:
    """The guided penalty with the gradient taken with respect to the caller's tensor."""
    (plain,) = torch.autograd.grad(model(z).gather(1, labels[:, None]).sum(), z,
                                   create_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guided = GuidedBackprop(model).attribute(z.detach().clone(), target=labels).detach()
    return (1 - F.cosine_similarity(plain.flatten(1), guided.flatten(1))).mean()


def test_relu_cnn_at_the_default_step_estimates_a_smoothed_gradient():
    """On a ReLU net the exact gradient ignores switching ReLUs; the difference quotient
    does not. Report the cosine, assert only that the estimate is a sane direction."""

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), Block(8),
        nn.MaxPool2d(2), Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    x, labels = torch.rand(16, 3, 12, 12), torch.arange(16) % 4
    params = list(model.parameters())
    cosines = {}
    for name, make in {
        "guided": lambda **kw: GuidedGradientRegularizer(model, weight=1.0, **kw),
        "penalty": lambda **kw: GradientNormPenalty(model, epsilon=0.05, **kw),
    }.items():
        _, exact = make()(x, labels)
        _, estimate = make(mode=FD)(x, labels)
        a, b = flat_gradient(estimate, params), flat_gradient(exact, params)
        cosines[name] = float(F.cosine_similarity(a, b, dim=0))
        assert torch.isfinite(a).all() and cosines[name] > 0
    print(f"ReLU CNN, default step: cosine(finite difference, exact) = {cosines}")


# ---------------------------------------------------------------- no double backward


class OnceSoftplus(torch.autograd.Function):
    """softplus with a hand-written backward marked @once_differentiable."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return F.softplus(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class CustomActivationNet(nn.Module):
    def __init__(self, once: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.once = once
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Sequential(AlwaysOnReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        # log1p(exp(h)): softplus spelled so that no guided rule recognises it.
        return self.head(OnceSoftplus.apply(h) if self.once else torch.log1p(h.exp()))


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_once_differentiable_model_exact_mode_names_the_other_mode(kind):
    model = CustomActivationNet(once=True).double()
    twin = CustomActivationNet(once=False).double()  # the same function, twice differentiable
    x, labels = batch()
    make = {
        "guided": lambda m, **kw: GuidedGradientRegularizer(m, weight=1.0, **kw),
        "penalty": lambda m, **kw: GradientNormPenalty(m, **NORMS["l1"], **kw),
    }[kind]
    with untouched(model, x, labels), pytest.raises(
        RuntimeError, match=r"OnceSoftplus.*once_differentiable.*mode='finite_difference'"
    ):
        make(model, mode="double_backprop")(x, labels)
    _, exact = make(twin)(x, labels)
    _, penalty = make(model, mode=FD, fd_step=1e-7)(x, labels)
    torch.testing.assert_close(penalty, exact.detach(), rtol=1e-10, atol=1e-14)
    got = flat_gradient(penalty, list(model.parameters()))
    expected = flat_gradient(exact, list(twin.parameters()))
    assert relative_error(got, expected) < 1e-4


def test_an_autograd_double_backward_error_is_explained():
    class NoSecondDerivative(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("derivative for aten::foo_backward is not implemented")

    with pytest.raises(RuntimeError, match="mode='finite_difference'") as info:
        GradientNormPenalty(NoSecondDerivative(), mode="double_backprop")(
            torch.rand(2, 3), torch.tensor([0, 1])
        )
    assert "aten::foo_backward" in str(info.value)


def _compiled(model: nn.Module, how: str) -> nn.Module:
    if how == "torch.compile":
        return torch.compile(model, backend="aot_eager")  # inductor takes ~30 s on CPU
    model.compile(backend="aot_eager")
    return model


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_compiled_models_run_in_finite_difference_mode(kind, how):
    torch._dynamo.reset()
    model = smooth_cnn()
    eager = copy.deepcopy(model)
    compiled = _compiled(model, how)
    x, labels = batch()
    make = {
        "guided": lambda m, **kw: GuidedGradientRegularizer(m, weight=1.0, **kw),
        "penalty": lambda m, **kw: GradientNormPenalty(m, **NORMS["group"], **kw),
    }[kind]
    with pytest.raises(TypeError, match="finite_difference"):
        make(compiled, mode="double_backprop")
    logits, penalty = make(compiled, mode=FD, fd_step=1e-7)(x, labels)
    _, exact = make(eager)(x, labels)
    torch.testing.assert_close(penalty, exact.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(logits, eager(x))
    got = flat_gradient(F.cross_entropy(logits, labels) + penalty, list(model.parameters()))
    expected = flat_gradient(F.cross_entropy(eager(x), labels) + exact, list(eager.parameters()))
    assert relative_error(got, expected) < 1e-4


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision zero-initialises the head
    return vit


@pytest.mark.parametrize("kind", ["penalty", "guided"])
def test_vision_transformer_trains_in_both_modes(kind):
    vit = small_vit().train()
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    # Plain autograd cannot double-backward through the default CPU attention kernel:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(vit(xr).sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        g.sum().backward()
    if kind == "penalty":
        make = lambda **kw: GradientNormPenalty(vit, norm="l1", epsilon=0.1, **kw)  # noqa: E731
    else:
        make = lambda **kw: GuidedGradientRegularizer(vit, weight=1.0, **kw)  # noqa: E731
        try:
            make()(x, labels)
        except ValueError as error:  # the guided rule needs GELU support
            pytest.skip(f"guided rule does not support the ViT: {error}")
    params = list(vit.parameters())
    torch.manual_seed(1)
    logits, exact = make()(x, labels)  # math attention kernel inside
    expected = flat_gradient(F.cross_entropy(logits, labels) + exact, params)
    torch.manual_seed(1)
    logits, penalty = make(mode=FD)(x, labels)  # default kernel, first derivatives only
    got = flat_gradient(F.cross_entropy(logits, labels) + penalty, params)
    torch.testing.assert_close(penalty, exact.detach(), rtol=1e-4, atol=1e-6)
    # GELU, softmax and LayerNorm are smooth: the default step agrees closely.
    assert float(F.cosine_similarity(got, expected, dim=0)) > 0.95
    assert_no_hooks(vit)


# ---------------------------------------------------------------- mixed precision


class FixedScaler:
    """A GradScaler-like object with a known factor."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.factor


@pytest.mark.parametrize("scaler", ["fixed", "torch.amp"])
@pytest.mark.parametrize(
    "mode, dtype",
    [("double_backprop", torch.float32), (FD, torch.float32), (FD, torch.float64)],
)
@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_grad_scaler_arithmetic_leaves_values_and_gradients_unchanged(kind, mode, dtype, scaler):
    # Under a scaler the finite-difference mode takes the weight gradient at x in a pass
    # of its own instead of the caller's backward pass: the same forward difference,
    # rounded differently. In float32 the two estimates differ by about 3e-5 (each is
    # about 6e-5 from the float64 one at the default step); in float64 they agree as
    # tightly as the exact mode's.
    model = smooth_cnn().to(dtype)
    x, labels = batch(dtype=dtype)
    factor = 2.0**10
    grad_scaler = (
        FixedScaler(factor) if scaler == "fixed" else torch.amp.GradScaler("cpu", init_scale=factor)
    )
    make = {
        "guided": lambda **kw: GuidedGradientRegularizer(model, weight=1.0, mode=mode, **kw),
        "penalty": lambda **kw: GradientNormPenalty(model, **NORMS["gaze"], mode=mode, **kw),
    }[kind]
    mask = torch.ones(4, 1, 6, 6) if kind == "penalty" else None
    call = (lambda m: m(x, labels, mask=mask)) if mask is not None else (lambda m: m(x, labels))
    params = list(model.parameters())
    logits, penalty = call(make())
    plain = flat_gradient(F.cross_entropy(logits, labels) + penalty, params)
    logits, scaled_penalty = call(make(grad_scaler=grad_scaler))
    loss = grad_scaler.scale(F.cross_entropy(logits, labels) + scaled_penalty)
    scaled = flat_gradient(loss, params) / factor
    torch.testing.assert_close(scaled_penalty, penalty, rtol=1e-6, atol=0)
    if mode == FD and dtype == torch.float32:
        assert relative_error(scaled, plain) < 2e-4
    else:
        torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("mode", ["double_backprop", FD])
@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_cuda_autocast_with_a_grad_scaler(kind, mode):
    device = torch.device("cuda")
    model = smooth_cnn().float().to(device)
    reference = copy.deepcopy(model)
    x, labels = (t.to(device) for t in batch(n=8, dtype=torch.float32))
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)
    make = {
        "guided": lambda m, **kw: GuidedGradientRegularizer(m, weight=1.0, **kw),
        "penalty": lambda m, **kw: GradientNormPenalty(m, **NORMS["l1"], **kw),
    }[kind]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with torch.autocast("cuda", dtype=torch.float16):
        logits, penalty = make(model, mode=mode, grad_scaler=scaler)(x, labels)
        loss = F.cross_entropy(logits, labels) + penalty
    assert logits.dtype == torch.float16
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = flat_gradient_of(model)
    _, full = make(reference)(x, labels)  # float32, exact
    expected = torch.cat([
        g.reshape(-1) for g in torch.autograd.grad(
            F.cross_entropy(reference(x), labels) + full, list(reference.parameters()))
    ])
    torch.testing.assert_close(penalty.float(), full.detach(), rtol=2e-2, atol=1e-4)
    assert torch.isfinite(grads).all()
    assert float(F.cosine_similarity(grads, expected, dim=0)) > 0.95
    scaler.step(optimizer)
    scaler.update()


def flat_gradient_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def scaler_trajectory(make, mode: str, steps: int = 20) -> tuple[float, int]:
    """Train a small ReLU CNN under CPU float16 autocast with a ``GradScaler``.

    Returns the final loss scale and the number of skipped steps (those after which
    the scale fell: with the default growth interval of 2000 it never grows here).
    """
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=4, width=4, batch_norm=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")  # starts at 2**16
    loss_fn = make(model, mode=mode, grad_scaler=scaler)
    gen = torch.Generator().manual_seed(1)
    skipped = 0
    for _ in range(steps):
        x = torch.rand(8, 3, 16, 16, generator=gen)
        labels = torch.randint(0, 4, (8,), generator=gen)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            logits, penalty = loss_fn(x, labels)
            loss = F.cross_entropy(logits, labels) + penalty
        assert logits.dtype == torch.float16
        before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < before
    return scaler.get_scale(), skipped


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_loss_scaler_settles_as_in_the_exact_mode_under_float16_autocast(kind):
    # The forward difference divides by h (about 1/100 here). Were -L(x)/h back-
    # propagated through the caller's float16 graph, its gradients would be 1/h larger
    # than a plain step's: the scaler used to skip 10 of 20 steps and settle 512x lower
    # (guided; 2 steps and 4x for the norm penalty) than in the exact mode.
    make = {
        "guided": lambda m, **kw: GuidedGradientRegularizer(m, weight=1.0, **kw),
        "penalty": lambda m, **kw: GradientNormPenalty(m, norm="l1", epsilon=0.1, **kw),
    }[kind]
    exact_scale, exact_skipped = scaler_trajectory(make, "double_backprop")
    fd_scale, fd_skipped = scaler_trajectory(make, FD)
    print(f"{kind}: exact {exact_scale:g} ({exact_skipped} skipped), "
          f"finite difference {fd_scale:g} ({fd_skipped} skipped)")
    assert exact_skipped <= 2  # the exact mode trains: a meaningful reference
    assert abs(fd_skipped - exact_skipped) <= 1
    assert exact_scale / 2 <= fd_scale <= exact_scale * 2


def with_batchnorm(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Tanh(), nn.Conv2d(5, 5, 3, padding=1),
        nn.BatchNorm2d(5), AlwaysOnReLU(), nn.Dropout(dropout), nn.Flatten(),
        nn.Linear(5 * 6 * 6, 4),
    ).double().train()


@pytest.mark.parametrize(
    "kind, path",
    [
        ("guided", "batchnorm"),  # held statistics, their share through the caller's pass
        ("guided", "batchnorm subset"),  # the perturbed loss is a difference already
        ("guided", "subset"),
        ("guided", "module before"),
        ("penalty", "batchnorm"),
        ("penalty", "module before"),
    ],
)
def test_loss_scaling_leaves_the_finite_difference_gradient_unchanged(kind, path):
    # With a scaler, the gradients at x come from a reference pass of their own instead
    # of the caller's backward pass: the same forward difference, the same dropout masks.
    dropout = 0.0 if "subset" in path else 0.3
    model = with_batchnorm(dropout) if "batchnorm" in path else smooth_cnn(dropout=dropout).train()
    torch.manual_seed(1)
    pre = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh()).double()
    x, labels = batch(n=6)
    fraction = 0.5 if "subset" in path else 1.0
    make = {
        "guided": lambda **kw: GuidedGradientRegularizer(
            model, weight=1.0, fraction=fraction, mode=FD, fd_step=1e-3, **kw),
        "penalty": lambda **kw: GradientNormPenalty(
            model, **NORMS["elastic_net"], mode=FD, fd_step=1e-3, **kw),
    }[kind]
    params = list(pre.parameters()) + list(model.parameters())
    factor = 2.0**10

    def gradient(grad_scaler=None) -> torch.Tensor:
        torch.manual_seed(2)
        inputs = pre(x) if path == "module before" else x
        logits, penalty = make(grad_scaler=grad_scaler)(inputs, labels)
        loss = F.cross_entropy(logits, labels) + penalty
        return flat_gradient(loss if grad_scaler is None else grad_scaler.scale(loss), params)

    plain = gradient()
    scaled = gradient(FixedScaler(factor)) / factor
    assert plain.abs().sum() > 0
    torch.testing.assert_close(scaled, plain, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("scaled", [False, True])
def test_a_module_before_a_batchnorm_model_is_trained_by_the_subset_difference(scaled):
    # With train-mode BatchNorm and fraction < 1, x_subset + h v and x_subset share one
    # pass; the difference of grad_x at its two halves trains reg(pre(x), y)'s pre. The
    # exact mode is the reference for the per-example BatchNorm semantics (see above).
    model = with_batchnorm()
    twin = copy.deepcopy(model)
    torch.manual_seed(1)
    pre = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh()).double()
    x, labels = batch(n=8)
    params = list(pre.parameters()) + list(model.parameters())
    torch.manual_seed(4)  # the same subset in both modes
    logits, exact = GuidedGradientRegularizer(model, weight=1.0, fraction=0.5)(pre(x), labels)
    expected = flat_gradient(F.cross_entropy(logits, labels) + exact, params)
    model.load_state_dict(twin.state_dict())  # undo the exact call's statistics update
    scaler = FixedScaler(2.0**10) if scaled else None
    torch.manual_seed(4)
    reg = GuidedGradientRegularizer(model, weight=1.0, fraction=0.5, mode=FD, fd_step=1e-7,
                                    grad_scaler=scaler)
    logits, penalty = reg(pre(x), labels)
    loss = F.cross_entropy(logits, labels) + penalty
    got = flat_gradient(loss, params) if scaler is None else (
        flat_gradient(scaler.scale(loss), params) / scaler.factor
    )
    pre_size = sum(p.numel() for p in pre.parameters())
    assert expected[:pre_size].abs().sum() > 0
    assert relative_error(got[:pre_size], expected[:pre_size]) < 1e-4
    assert relative_error(got, expected) < 1e-4


# ---------------------------------------------------------------- contract of the new options


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "exact"}, ValueError, "mode must be one of"),
        (
            {"mode": "double_backprop", "fd_step": 1e-3},
            ValueError,
            "only used by mode='finite_difference'",
        ),
        ({"mode": FD, "fd_step": 0.0}, ValueError, "fd_step"),
        ({"mode": FD, "fd_step": float("nan")}, ValueError, "fd_step"),
        ({"mode": FD, "fd_step": "0.1"}, TypeError, "fd_step"),
        ({"grad_scaler": 2.0}, TypeError, "grad_scaler"),
    ],
)
@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_bad_mode_settings_are_refused(kind, kwargs, error, match):
    cls = GuidedGradientRegularizer if kind == "guided" else GradientNormPenalty
    with pytest.raises(error, match=match):
        cls(smooth_cnn(), **kwargs)


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_finite_difference_penalty_leaves_the_model_as_found_and_backpropagates_once(kind):
    model = smooth_cnn().eval()
    x, labels = batch()
    loss = (GuidedGradientRegularizer(model, mode=FD) if kind == "guided"
            else GradientNormPenalty(model, mode=FD))
    with untouched(model, x, labels):
        logits, penalty = loss(x, labels)
    assert penalty.requires_grad and penalty.dim() == 0
    total = F.cross_entropy(logits, labels) + penalty
    total.backward(retain_graph=True)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(RuntimeError, match="back-propagated once"):
        total.backward()
    assert_no_hooks(model)
    assert len(torch.overrides._get_current_function_mode_stack()) == 0


@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_zero_weight_trains_like_cross_entropy(kind):
    model = smooth_cnn()
    x, labels = batch()
    loss = (GuidedGradientRegularizer(model, weight=0.0, mode=FD) if kind == "guided"
            else GradientNormPenalty(model, epsilon=0.0, mode=FD))
    logits, penalty = loss(x, labels)
    assert float(penalty.detach()) == 0.0
    params = list(model.parameters())
    got = flat_gradient(F.cross_entropy(logits, labels) + penalty, params)
    torch.testing.assert_close(got, flat_gradient(F.cross_entropy(model(x), labels), params))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kind", ["guided", "penalty"])
def test_two_calls_then_one_backward_pass(kind, train):
    # The extra passes must not write the BatchNorm buffers that an earlier call's graph
    # saved (eval-mode BatchNorm saves its running statistics; gradient accumulation
    # keeps several graphs alive).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), AlwaysOnReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 4)).train(train)
    x, labels = batch(n=4, dtype=torch.float32)
    loss = (GuidedGradientRegularizer(model, mode=FD) if kind == "guided"
            else GradientNormPenalty(model, mode=FD))
    total = sum(F.cross_entropy(logits, labels) + penalty
                for logits, penalty in (loss(x, labels), loss(x.flip(0), labels)))
    total.backward()
    assert int(model[1].num_batches_tracked) == (2 if train else 0)
