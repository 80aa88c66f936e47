"""Signed gradient maps (positive / negative / active / inactive) against a plain loop."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
import torchvision
from captum.attr import NoiseTunnel, Saliency
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_regularized.attr import (
    ActiveSaliency,
    InactiveSaliency,
    NegativeSaliency,
    PositiveSaliency,
    signed_saliency_maps,
)
from captum_regularized.attr.class_gradients import class_gradients
from captum_regularized.models import SimpleCNN
from tests.model_checks import assert_no_hooks, untouched

CLASSES = {
    "positive": PositiveSaliency,
    "negative": NegativeSaliency,
    "active": ActiveSaliency,
    "inactive": InactiveSaliency,
}


# ---------------------------------------------------------------- the reference
def reference_maps(model, inputs, target=None, args=(), compare=None, abs=True):
    """Every map by the definition: one backward per class, explicit per-example loops.

    ``target``: ``None`` (argmax) or a list of class indices. ``compare``: ``None``
    (all other classes), or a list (per example) of the classes to compare with.
    Returns ``(maps, margin)``: maps as tuples, and per input the smallest
    ``|g_t - g_c|`` over the compared classes (where float noise could flip a test).
    """
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    out = model(*leaves, *args)
    batch, num_classes = out.shape
    targets = out.argmax(1).tolist() if target is None else list(target)
    per_class = []
    for c in range(num_classes):
        per_class.append(torch.autograd.grad(out[:, c].sum(), leaves, retain_graph=True))
    names = ("gradient", "positive", "negative", "active", "inactive")
    maps = {name: [] for name in names}
    margins = []
    for i, leaf in enumerate(leaves):
        per = {name: torch.zeros_like(leaf) for name in names}
        margin = torch.full_like(leaf, float("inf"))
        for b in range(batch):
            t = targets[b]
            g_t = per_class[t][i][b]
            others = [c for c in (range(num_classes) if compare is None else compare[b]) if c != t]
            above = torch.ones_like(g_t, dtype=torch.bool)
            below = torch.ones_like(g_t, dtype=torch.bool)
            for c in others:
                g_c = per_class[c][i][b]
                above &= g_t > g_c
                below &= g_t < g_c
                margin[b] = torch.minimum(margin[b], (g_t - g_c).abs())
            per["gradient"][b] = g_t
            per["positive"][b] = g_t.clamp(min=0)
            per["negative"][b] = (-g_t).clamp(min=0)
            active = torch.where(above, g_t, torch.zeros_like(g_t))
            inactive = torch.where(below, g_t, torch.zeros_like(g_t))
            per["active"][b] = active.abs() if abs else active
            per["inactive"][b] = inactive.abs() if abs else inactive
        for name in names:
            maps[name].append(per[name].detach())
        margins.append(margin.detach())
    return {name: tuple(v) for name, v in maps.items()}, tuple(margins)


def assert_matches(actual, expected, margins, name, atol=1e-6):
    """Equal up to float noise; a comparison may flip only where classes nearly tie."""
    actual = actual if isinstance(actual, tuple) else (actual,)
    assert len(actual) == len(expected)
    for a, e, margin in zip(actual, expected, margins):
        assert a.shape == e.shape and a.dtype == e.dtype and a.device == e.device
        # cuDNN may pick other algorithms for a batched backward pass than for a single one
        loose = a.device.type == "cuda"
        tie_tol, atol = (1e-4, max(atol, 1e-5)) if loose else (1e-5, atol)
        scale = float(e.abs().max()) + 1e-30
        near_tie = margin <= tie_tol * scale if name in ("active", "inactive") else False
        assert float(torch.as_tensor(near_tie).float().mean()) < 0.01, "too many near ties"
        close = torch.isclose(a, e, atol=atol * scale, rtol=1e-5) | near_tie
        assert bool(close.all()), f"{name}: {(~close).sum()} elements differ"


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 on CUDA, so the loop and the batched backward agree closely."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def small_cnn(device, num_classes=5):
    return SimpleCNN(num_classes=num_classes, width=4).to(device).eval()


class TwoInputNet(nn.Module):
    """Image + vector inputs and an extra non-tensor argument (a scale)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.image_head = nn.Linear(4 * 8 * 8, num_classes)
        self.vector_head = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, num_classes))

    def forward(self, image, vector, scale):
        features = torch.relu(self.conv(image)).flatten(1)
        return scale * (self.image_head(features) * self.vector_head(vector))


# ---------------------------------------------------------------- numbers
TARGET_FORMS = {
    "none": (None, None),
    "int": (2, [2, 2, 2]),
    "tuple": ((3,), [3, 3, 3]),
    "list": ([4, 0, 1], [4, 0, 1]),
    "tensor": (torch.tensor([1, 3, 0]), [1, 3, 0]),
    "list_of_tuples": ([(0,), (2,), (4,)], [0, 2, 4]),
}


@pytest.mark.parametrize("form", sorted(TARGET_FORMS))
def test_every_map_matches_the_loop_on_simple_cnn(device, form):
    model = small_cnn(device)
    x = torch.rand(3, 3, 16, 16, device=device)
    target, indices = TARGET_FORMS[form]
    if isinstance(target, torch.Tensor):
        target = target.to(device)
    expected, margins = reference_maps(model, (x,), indices)
    with untouched(model, x):
        for name, cls in CLASSES.items():
            assert_matches(cls(model).attribute(x, target=target), expected[name], margins, name)
        maps = signed_saliency_maps(model, x, target=target)
    for name, value in maps.items():
        assert_matches(value, expected[name], margins, name)
    assert_no_hooks(model)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_engine_matches_the_loop_on_resnet18(device, strategy):
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).eval()
    x = torch.rand(2, 3, 32, 32, device=device)
    expected, margins = reference_maps(model, (x,), abs=False)
    with untouched(model, x):
        grads = class_gradients(model, (x,), class_chunk_size=4, strategy=strategy)
    g_t = grads.target[0]
    assert_matches(g_t, expected["gradient"], margins, "gradient")
    active = torch.where(g_t > grads.max_other[0], g_t, 0)
    inactive = torch.where(g_t < grads.min_other[0], g_t, 0)
    assert_matches(active, expected["active"], margins, "active")
    assert_matches(inactive, expected["inactive"], margins, "inactive")
    assert bool(expected["active"][0].ne(0).any()) and bool(expected["inactive"][0].ne(0).any())


def test_resnet18_public_classes(device):
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).eval()
    x = torch.rand(2, 3, 32, 32, device=device)
    expected, margins = reference_maps(model, (x,), [7, 1])
    target = torch.tensor([7, 1], device=device)
    for name, cls in CLASSES.items():
        assert_matches(cls(model).attribute(x, target=target), expected[name], margins, name)


@pytest.mark.parametrize("abs_", [True, False])
def test_tuple_inputs_and_additional_forward_args(device, abs_):
    model = TwoInputNet().to(device)
    image = torch.rand(3, 3, 8, 8, device=device)
    vector = torch.randn(3, 6, device=device)
    expected, margins = reference_maps(model, (image, vector), args=(2.5,), abs=abs_)
    with untouched(model, image, vector):
        for name, cls in CLASSES.items():
            kwargs = {"abs": abs_} if name in ("active", "inactive") else {}
            out = cls(model).attribute((image, vector), additional_forward_args=2.5, **kwargs)
            assert isinstance(out, tuple) and len(out) == 2
            assert_matches(out, expected[name], margins, name)
        maps = signed_saliency_maps(model, (image, vector), None, (2.5,), abs=abs_)
    for name, value in maps.items():
        assert_matches(value, expected[name], margins, name)


def test_tuple_inputs_with_tensor_forward_args_and_explicit_targets(device):
    model = TwoInputNet().to(device)
    image = torch.rand(3, 3, 8, 8, device=device)
    vector = torch.randn(3, 6, device=device)
    scale = torch.tensor([[0.5], [2.0], [-1.0]], device=device)  # one per example
    target = [2, 0, 3]
    expected, margins = reference_maps(model, (image, vector), target, args=(scale,))
    with untouched(model, image, vector, scale):
        for name, cls in CLASSES.items():
            out = cls(model).attribute(
                (image, vector), target=target, additional_forward_args=(scale,)
            )
            assert_matches(out, expected[name], margins, name)
    assert bool(expected["active"][0].ne(0).any())


def test_abs_false_keeps_sign_and_abs_true_is_its_magnitude():
    model = small_cnn("cpu")
    x = torch.rand(2, 3, 16, 16)
    for cls in (ActiveSaliency, InactiveSaliency):
        signed = cls(model).attribute(x, abs=False)
        assert bool((signed < 0).any()) or bool((signed > 0).any())
        assert torch.equal(cls(model).attribute(x), signed.abs())
    gradient = signed_saliency_maps(model, x)["gradient"]
    active = ActiveSaliency(model).attribute(x, abs=False)
    inactive = InactiveSaliency(model).attribute(x, abs=False)
    # a pixel is never both active and inactive, and either map keeps g_t where non-zero
    assert not bool(((active != 0) & (inactive != 0)).any())
    assert torch.equal(active[active != 0], gradient[active != 0])
    assert torch.equal(inactive[inactive != 0], gradient[inactive != 0])


# ---------------------------------------------------------------- ties and comparisons
def tied_linear() -> nn.Linear:
    """Rows 0 and 1 identical; row 2 different; row 3 = row 0 + 1 everywhere."""
    model = nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.copy_(
            torch.tensor(
                [
                    [1.0, -2.0, 0.5, 0.0],
                    [1.0, -2.0, 0.5, 0.0],
                    [0.0, -3.0, 1.0, 0.0],
                    [2.0, -1.0, 1.5, 1.0],
                ]
            )
        )
    return model


def test_ties_are_strict():
    model = tied_linear()
    x = torch.rand(2, 4)
    # target 0 ties with class 1 everywhere: never strictly above or below all others
    assert torch.equal(ActiveSaliency(model).attribute(x, target=0), torch.zeros_like(x))
    assert torch.equal(InactiveSaliency(model).attribute(x, target=0), torch.zeros_like(x))
    # with class 2 alone g_0 is strictly above at features 0, 1 and ties at feature 3
    # (max(w1, w2) = [1, -2, 1, 0]); adding the tied class 1 must remove them all
    tied = torch.tensor([1, 2])
    for cls in (ActiveSaliency, InactiveSaliency):  # min(w1, w2) = [0, -3, 0.5, 0]: ties
        assert torch.equal(cls(model).attribute(x, target=0, compare_classes=tied),
                           torch.zeros_like(x))
    # against class 2 and 3 only: w0 > w2 at features 0, 1 -- but w3 > w0 everywhere
    listed = torch.tensor([2])
    active = ActiveSaliency(model).attribute(x, target=0, compare_classes=listed, abs=False)
    assert active.tolist() == [[1.0, -2.0, 0.0, 0.0]] * 2
    inactive = InactiveSaliency(model).attribute(
        x, target=0, compare_classes=torch.tensor([3]), abs=False
    )
    assert inactive.tolist() == [[1.0, -2.0, 0.5, 0.0]] * 2
    # class 3 is strictly above every other class except at feature 3 where w0 = w1 = w2 < 1
    assert ActiveSaliency(model).attribute(x, target=3).tolist() == [[2.0, 1.0, 1.5, 1.0]] * 2


def test_listed_target_is_skipped_in_compare_classes():
    model = tied_linear()
    x = torch.rand(2, 4)
    with_self = ActiveSaliency(model).attribute(x, target=0, compare_classes=torch.tensor([0, 2]))
    without = ActiveSaliency(model).attribute(x, target=0, compare_classes=torch.tensor([2]))
    assert torch.equal(with_self, without)


@pytest.mark.parametrize("k", [1, 3, 9, 50])
def test_top_k_compare_classes_matches_the_loop(k):
    model = small_cnn("cpu", num_classes=10)
    x = torch.rand(3, 3, 16, 16)
    target = [0, 5, 9]
    scores = model(x).detach()
    compare = []
    for b in range(3):
        order = [c for c in scores[b].argsort(descending=True).tolist() if c != target[b]]
        compare.append(order[:k])
    expected, margins = reference_maps(model, (x,), target, compare=compare)
    for name in ("active", "inactive"):
        actual = CLASSES[name](model).attribute(x, target=target, compare_classes=k)
        assert_matches(actual, expected[name], margins, name)
    if k >= 9:
        exact, _ = reference_maps(model, (x,), target)
        assert_matches(ActiveSaliency(model).attribute(x, target=target, compare_classes=k),
                       exact["active"], margins, "active")


def test_fewer_compared_classes_can_only_add_active_pixels():
    model = small_cnn("cpu", num_classes=10)
    x = torch.rand(2, 3, 16, 16)
    exact = ActiveSaliency(model).attribute(x) != 0
    approx = ActiveSaliency(model).attribute(x, compare_classes=2) != 0
    assert bool((approx | ~exact).all()) and int(approx.sum()) >= int(exact.sum())


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_chunk_size_and_strategy_do_not_change_the_result(chunk, strategy):
    model = small_cnn("cpu", num_classes=7)
    x = torch.rand(2, 3, 16, 16)
    expected, margins = reference_maps(model, (x,), [6, 0], abs=False)
    grads = class_gradients(model, (x,), [6, 0], class_chunk_size=chunk, strategy=strategy)
    assert_matches(grads.target, expected["gradient"], margins, "gradient")
    for name, cls in (("active", ActiveSaliency), ("inactive", InactiveSaliency)):
        out = cls(model).attribute(x, target=[6, 0], abs=False, class_chunk_size=chunk)
        assert_matches(out, expected[name], margins, name)


def test_backward_strategy_forces_the_engine_and_is_checked():
    model = small_cnn("cpu", num_classes=4)
    x = torch.rand(2, 3, 8, 8)
    expected, margins = reference_maps(model, (x,), abs=False)
    for strategy in ("auto", "vmap", "loop"):
        method = InactiveSaliency(model, backward_strategy=strategy)  # as multiply_by_inputs
        assert method.backward_strategy == strategy
        out = method.attribute(x, abs=False, class_chunk_size=3)
        assert_matches(out, expected["inactive"], margins, "inactive")
    assert InactiveSaliency(model).backward_strategy == "auto"  # the default
    with pytest.raises(ValueError, match="backward_strategy must be one of"):
        ActiveSaliency(model, backward_strategy="batched")  # at construction
    with pytest.raises(TypeError):
        ActiveSaliency(model, "loop")  # keyword-only, as in Captum
    method.backward_strategy = "batched"  # set later: checked when it is used
    with pytest.raises(ValueError, match="backward_strategy must be one of"):
        method.attribute(x)


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number: vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 + 0.0 * float(grad.sum().item()))


class _UnbatchableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5))

    def forward(self, x):
        return self.body(_ItemInBackward.apply(x))


def test_vmap_failure_falls_back_to_the_loop():
    model = _UnbatchableNet()
    x = torch.randn(3, 3, 2, 2)
    with pytest.raises(RuntimeError):  # the batched backward really fails on this model
        torch.autograd.grad(
            model(x.requires_grad_()), x, torch.eye(5)[:, None].expand(5, 3, 5),
            is_grads_batched=True,
        )
    x = x.detach()
    expected, margins = reference_maps(model, (x,), abs=False)
    grads = class_gradients(model, (x,), class_chunk_size=2, strategy="vmap")
    assert_matches(grads.target, expected["gradient"], margins, "gradient")
    active = torch.where(grads.target[0] > grads.max_other[0], grads.target[0], 0)
    assert_matches(active, expected["active"], margins, "active")


def test_all_maps_come_from_one_forward_pass():
    model = small_cnn("cpu")
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 3, 16, 16)
    maps = signed_saliency_maps(model, x)
    assert len(calls) == 1
    for name, cls in CLASSES.items():
        assert torch.equal(maps[name], cls(model).attribute(x))


# ---------------------------------------------------------------- other outputs / settings
def test_positive_and_negative_agree_with_captum_saliency(device):
    model = small_cnn(device)
    x = torch.rand(2, 3, 16, 16, device=device)
    positive = PositiveSaliency(model).attribute(x, target=[1, 3])
    negative = NegativeSaliency(model).attribute(x, target=[1, 3])
    signed = Saliency(model).attribute(x, target=[1, 3], abs=False)
    assert torch.allclose(positive - negative, signed, atol=1e-7)
    assert torch.allclose(positive + negative, signed.abs(), atol=1e-7)
    assert bool((positive * negative == 0).all())


def test_scalar_output_means_the_scalar_for_positive_and_negative():
    model = small_cnn("cpu")

    def energy(x):
        return model(x).square().sum(1)

    x = torch.rand(2, 3, 16, 16)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(energy(leaf).sum(), leaf)
    assert torch.allclose(PositiveSaliency(energy).attribute(x), grad.clamp(min=0))
    assert torch.allclose(NegativeSaliency(energy).attribute(x), (-grad).clamp(min=0))


def test_model_state_is_restored_and_grad_mode_does_not_matter():
    model = small_cnn("cpu").train()
    model.stem[0].weight.requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x, buffers=False), torch.no_grad():
        out = ActiveSaliency(model).attribute(x)
    assert out.shape == x.shape and not out.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_under_autocast_close_to_the_loop_under_autocast():
    model = small_cnn("cpu")
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, margins = reference_maps(model, (x,), [1, 2])
        maps = signed_saliency_maps(model, x, target=[1, 2])
    assert maps["active"].dtype == torch.float32
    for name in ("gradient", "positive", "negative", "active", "inactive"):
        assert_matches(maps[name], expected[name], margins, name, atol=1e-3)


# ---------------------------------------------------------------- Captum interop
def test_noise_tunnel_wraps_the_classes():
    model = tied_linear()  # linear: every noisy sample has the same gradients
    x = torch.rand(2, 4)
    for name, cls in CLASSES.items():
        kwargs = {"abs": False, "compare_classes": torch.tensor([2])} if name in (
            "active", "inactive") else {}
        plain = cls(model).attribute(x, target=0, **kwargs)
        smooth = NoiseTunnel(cls(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=0, **kwargs
        )
        assert torch.allclose(smooth, plain, atol=1e-6), name
    cnn = small_cnn("cpu")
    image = torch.rand(2, 3, 16, 16)
    smooth = NoiseTunnel(PositiveSaliency(cnn)).attribute(
        image, nt_type="smoothgrad", nt_samples=3, target=[0, 1]
    )
    assert smooth.shape == image.shape and bool((smooth >= 0).all())


def test_visualize_image_attr_takes_the_maps():
    model = small_cnn("cpu")
    x = torch.rand(1, 3, 16, 16)
    attr = PositiveSaliency(model).attribute(x, target=0)
    fig, axis = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map", sign="positive", use_pyplot=False,
    )
    try:
        assert fig is not None and axis is not None
    finally:
        plt.close(fig)


def test_captum_metrics_take_the_maps():
    model = tied_linear()
    x = torch.rand(3, 4)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.1
        return noise, inputs - noise

    positive = PositiveSaliency(model).attribute(x, target=2)
    negative = NegativeSaliency(model).attribute(x, target=2)
    exact = infidelity(model, perturb, x, positive - negative, target=2)
    partial = infidelity(model, perturb, x, positive, target=2)
    assert exact.shape == (3,) and bool((exact < 1e-8).all())  # linear: exact explanation
    assert bool((partial > 1e-6).all())  # dropping the negative half loses information
    sensitivity = sensitivity_max(ActiveSaliency(model).attribute, x, target=2)
    assert sensitivity.shape == (3,) and bool((sensitivity == 0).all())  # constant gradients
    cnn = small_cnn("cpu")
    image = torch.rand(2, 3, 16, 16)
    moved = sensitivity_max(PositiveSaliency(cnn).attribute, image, target=1, n_perturb_samples=2)
    assert moved.shape == (2,) and bool(torch.isfinite(moved).all())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["active", "inactive"])
def test_active_and_inactive_need_a_two_d_output(name):
    model = small_cnn("cpu")
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):
        with pytest.raises(ValueError, match=r"\(batch, classes\)"):
            CLASSES[name](lambda inp: model(inp).sum(1)).attribute(x)
        with pytest.raises(ValueError, match=r"\(batch, classes\)"):
            CLASSES[name](lambda inp: model(inp)[:, None]).attribute(x, target=(0, 1))
        with pytest.raises(ValueError, match="at least 2 classes"):
            CLASSES[name](lambda inp: model(inp)[:, :1]).attribute(x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"compare_classes": 0}, ValueError, "positive"),
        ({"compare_classes": 2.0}, TypeError, "compare_classes"),
        ({"compare_classes": True}, TypeError, "compare_classes"),
        ({"compare_classes": torch.tensor([0, 5])}, ValueError, r"\[0, 4\]"),
        ({"compare_classes": torch.tensor([[0, 1]])}, ValueError, "1-D"),
        ({"compare_classes": torch.tensor([0.0])}, TypeError, "integers"),
        ({"class_chunk_size": 0}, ValueError, "class_chunk_size"),
        ({"class_chunk_size": 1.5}, TypeError, "class_chunk_size"),
    ],
)
def test_bad_comparison_settings(kwargs, error, match):
    model = small_cnn("cpu")
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x), pytest.raises(error, match=match):
        ActiveSaliency(model).attribute(x, **kwargs)

