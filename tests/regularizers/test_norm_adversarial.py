"""NormRegularizedAdversarialLoss: closed forms, iterative solver, model state, DDP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.robust import FGSM, PGD
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.models import SimpleCNN, train_classifier
from captum_regularized.regularizers import GradientNormPenalty, NormRegularizedAdversarialLoss
from captum_regularized.regularizers.adversarial_norms import adversarial_norm
from tests.distributed import run_distributed
from tests.model_checks import assert_no_hooks, untouched
from tests.training_reference import hand_written_step

SETTINGS = {
    "l1": {"norm": "l1", "epsilon": 0.05},
    "elastic_net": {"norm": "elastic_net", "epsilon": 0.02, "epsilon2": 0.05},
    "group": {"norm": "group", "epsilon": 0.1, "group_size": 3},
    "gaze": {"norm": "gaze", "epsilon": 0.1},
}
ITERATIVE = ["l1", "elastic_net", "group"]


def _model(batch_norm: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SimpleCNN(num_classes=3, width=4, batch_norm=batch_norm)


def _batch(n: int = 4, size: int = 10):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    mask = torch.rand(n, 1, size, size, generator=gen) > 0.5
    return images, labels, mask


def _mask_for(norm, mask):
    return mask if norm == "gaze" else None


def _loss_gradient(model, images, labels):
    x = images.clone().requires_grad_(True)
    losses = F.cross_entropy(model(x), labels, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), g


def _inner_objective(model, images, labels, delta, norm, epsilon, epsilon2):
    """l(x + delta) - R(delta), R written out here (0 on the feasible set for l1/group)."""
    with torch.no_grad():
        losses = F.cross_entropy(model(images + delta), labels, reduction="none")
    if norm == "elastic_net":
        excess = (delta.abs() - epsilon).clamp_min(0)
        losses = losses - excess.pow(2).flatten(1).sum(1) / (4 * epsilon2)
    return losses


# ---------------------------------------------------------------- closed form


@pytest.mark.parametrize("norm", list(SETTINGS))
def test_closed_form_matches_the_formula_on_the_model_gradient(norm, device):
    model = _model().to(device).eval()
    images, labels, mask = (t.to(device) for t in _batch())
    settings = SETTINGS[norm]
    adv = NormRegularizedAdversarialLoss(model, **settings)
    with untouched(model, images, labels):
        delta = adv.perturb(images, labels, mask=_mask_for(norm, mask))
    _, g = _loss_gradient(model, images, labels)
    eps = settings["epsilon"]
    if norm == "l1":
        expected = eps * g.sign()
    elif norm == "elastic_net":
        expected = eps * g.sign() + 2 * settings["epsilon2"] * g
    elif norm == "group":
        norms = F.avg_pool2d(g.pow(2), 3, ceil_mode=True, divisor_override=1)  # patch sums
        norms = F.interpolate(norms.sqrt(), scale_factor=3, mode="nearest")[..., :10, :10]
        expected = eps * g / norms
    else:
        m = mask.float()
        expected = 2 * eps * (0.5 - m) * g / g.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    assert not delta.requires_grad


@pytest.mark.parametrize("select", ["last", "best"])
def test_examples_do_not_depend_on_the_rest_of_the_batch(select):
    # float64: in float32 the batched and single-example convolutions differ in the last
    # bits, enough to flip best-iterate choices between two iterates of almost equal value.
    model = _model().double().eval()
    images, labels, _ = _batch(n=4)
    images = images.double()
    for norm in ITERATIVE:
        adv = NormRegularizedAdversarialLoss(model, **SETTINGS[norm], steps=3,
                                             select_iterate=select)
        together = adv.perturb(images, labels)
        alone = torch.cat([adv.perturb(images[i:i + 1], labels[i:i + 1]) for i in range(4)])
        torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- iterative solver


@pytest.mark.parametrize("norm", ITERATIVE)
@pytest.mark.parametrize("steps", [2, 3, 6])
def test_iterates_stay_feasible(norm, steps):
    model = _model()
    images, labels, _ = _batch()
    settings = SETTINGS[norm]
    adv = NormRegularizedAdversarialLoss(model, **settings, steps=steps, step_size=0.08)
    delta = adv.perturb(images, labels)
    eps = settings["epsilon"]
    if norm == "l1":
        assert float(delta.abs().max()) <= eps + 1e-7
    if norm == "group":
        patches = F.avg_pool2d(delta.pow(2), 3, ceil_mode=True, divisor_override=1)
        assert float(patches.sqrt().max()) <= eps + 1e-6
    assert bool(torch.isfinite(delta).all())


@pytest.mark.parametrize("norm", ITERATIVE)
def test_iterative_objective_is_at_least_the_closed_forms(norm):
    model = _model(batch_norm=False)  # non-linear (ReLU, max pooling)
    images, labels, _ = _batch(n=6)
    settings = dict(SETTINGS[norm], epsilon=4 * SETTINGS[norm]["epsilon"])
    closed = NormRegularizedAdversarialLoss(model, **settings).perturb(images, labels)
    iterative = NormRegularizedAdversarialLoss(
        model, **settings, steps=6, select_iterate="best"
    ).perturb(images, labels)
    args = (norm, settings["epsilon"], settings.get("epsilon2", 0.0))
    closed_value = _inner_objective(model, images, labels, closed, *args)
    iterative_value = _inner_objective(model, images, labels, iterative, *args)
    assert bool((iterative_value >= closed_value - 1e-5).all())
    assert float((iterative_value - closed_value).max()) > 1e-4  # the steps do something


def _reference_solver(model, images, labels, spec, steps, step_size=None,
                      input_range=None, keep_best=True):
    """The iterative solver as it stood before the cost change, written out as a loop.

    Closed form from ``delta = 0``, ``steps - 1`` projected ascent steps on ``l - R``,
    and (``keep_best``) every example's best iterate, the last one scored by a forward
    pass of its own. The per-norm pieces (closed form, projection, step, cost) are the
    library's, tested in ``test_adversarial_norms.py``, so that the comparison with the
    class can be bit for bit.
    """

    def feasible(delta):
        delta = spec.project(delta)
        if input_range is not None:
            delta = (images + delta).clamp(*input_range) - images
        return delta

    losses, g = _loss_gradient(model, images, labels)
    delta = feasible(spec.closed_form_maximiser(g))
    if step_size is None:
        if spec.norm == "elastic_net":
            radius = torch.linalg.vector_norm(delta.reshape(delta.shape[0], -1), dim=1)
            step_size = (2.5 / steps) * radius.reshape(-1, 1, 1, 1)
        else:
            step_size = (2.5 / steps) * spec.epsilon
    iterates, values = [], []
    for _ in range(steps - 1):
        losses, g = _loss_gradient(model, images + delta, labels)
        iterates.append(delta)
        values.append(losses - spec.adversary_cost(delta))
        direction = g - spec.adversary_cost_gradient(delta)
        delta = feasible(delta + spec.ascent_step(direction, step_size))
    if not keep_best:
        return delta
    with torch.no_grad():
        losses = F.cross_entropy(model(images + delta), labels, reduction="none")
    iterates.append(delta)
    values.append(losses - spec.adversary_cost(delta))
    best = delta.clone()
    for i in range(images.shape[0]):  # first strict maximum of each example's values
        scores = [float(v[i]) for v in values]
        best[i] = iterates[scores.index(max(scores))][i]
    return best


REFERENCE_CASES = [
    ("l1", {}, {"input_range": (0.0, 1.0)}),
    ("l1", {"step_size": 0.03}, {}),
    ("elastic_net", {}, {}),
    ("group", {}, {}),
    ("group", {"step_size": 0.05}, {"input_range": (0.0, 1.0)}),
]


@pytest.mark.parametrize("select", ["best", "last"])
@pytest.mark.parametrize("norm,step,extra", REFERENCE_CASES)
def test_solver_is_bit_identical_to_the_reference_loop(norm, step, extra, select):
    """``select_iterate="best"`` is the solver as it was; ``"last"`` its last iterate.

    Train-mode BatchNorm (batch statistics): every inner pass sees the whole batch.
    """
    model = _model().train()
    reference = copy.deepcopy(model)
    images, labels, _ = _batch(n=6)
    settings = dict(SETTINGS[norm], epsilon=4 * SETTINGS[norm]["epsilon"])
    spec = adversarial_norm(norm, settings["epsilon"], settings.get("epsilon2", 0.0),
                    settings.get("group_size", 14))
    adv = NormRegularizedAdversarialLoss(model, **settings, steps=5, **step, **extra,
                                         select_iterate=select)
    delta = adv.perturb(images, labels)
    expected = _reference_solver(reference, images, labels, spec, 5,
                                 step.get("step_size"), extra.get("input_range"),
                                 keep_best=select == "best")
    assert torch.equal(delta, expected)


@pytest.mark.parametrize("norm", ITERATIVE)
def test_best_iterate_scores_at_least_the_last_one(norm):
    model = _model(batch_norm=False)
    images, labels, _ = _batch(n=6)
    settings = dict(SETTINGS[norm], epsilon=4 * SETTINGS[norm]["epsilon"])
    last, best = (
        NormRegularizedAdversarialLoss(model, **settings, steps=6, select_iterate=select)
        .perturb(images, labels)
        for select in ("last", "best")
    )
    args = (norm, settings["epsilon"], settings.get("epsilon2", 0.0))
    last_value = _inner_objective(model, images, labels, last, *args)
    best_value = _inner_objective(model, images, labels, best, *args)
    assert bool((best_value >= last_value - 1e-6).all())
    assert float((best_value - last_value).max()) > 1e-5  # the choice matters somewhere


@pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require")
def test_l1_last_iterate_is_captums_pgd():
    """With ``step_size=epsilon`` the ``l1`` solver takes Captum's ``PGD`` (L-inf) steps.

    The first step of both is ``epsilon * sign(g)`` from ``x``. float64 and a smooth
    model keep every gradient entry far above Captum's zero threshold (1e-6).
    """
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (8,), generator=gen)
    eps = 0.1
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=eps, steps=6, step_size=eps,
                                         input_range=(0.0, 1.0))
    ours = images + adv.perturb(images, labels)
    pgd = PGD(model, loss_func=lambda out, y: F.cross_entropy(out, y, reduction="none"),
              lower_bound=0.0, upper_bound=1.0)
    theirs = pgd.perturb(images, radius=eps, step_size=eps, step_num=6, target=labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert float((ours - images).abs().max()) == pytest.approx(eps)


class _PassCounter(torch.autograd.Function):
    """Identity on the logits whose backward counts the backward passes."""

    @staticmethod
    def forward(ctx, logits, counts):
        ctx.counts = counts
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        ctx.counts["backward"] += 1
        return grad, None


class _CountingModel(nn.Module):
    """The model, counting forward passes (with and without autograd) and backward ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.counts = {"forward": 0, "no_grad_forward": 0, "backward": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["forward" if torch.is_grad_enabled() else "no_grad_forward"] += 1
        return _PassCounter.apply(self.model(x), self.counts)

    def reset(self) -> dict:
        counts = dict(self.counts)
        self.counts.update(forward=0, no_grad_forward=0, backward=0)
        return counts


@pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require")
@pytest.mark.parametrize("norm", ITERATIVE)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_passes_are_those_of_captums_pgd(norm, steps):
    """``steps`` forward and backward passes, like ``PGD(step_num=steps)`` / ``FGSM``.

    ``select_iterate="best"`` adds one forward pass without gradient (none at one step);
    the training loss adds the outer forward pass and its backward pass.
    """
    model = _CountingModel(_model().train())
    images, labels, _ = _batch()
    if steps == 1:
        FGSM(model, lower_bound=0.0, upper_bound=1.0).perturb(images, 0.05, target=labels)
    else:
        PGD(model, lower_bound=0.0, upper_bound=1.0).perturb(
            images, radius=0.05, step_size=0.02, step_num=steps, target=labels)
    peer = model.reset()
    assert peer == {"forward": steps, "no_grad_forward": 0, "backward": steps}
    adv = NormRegularizedAdversarialLoss(model, **SETTINGS[norm], steps=steps)
    adv.perturb(images, labels)
    assert model.reset() == peer
    adv(images, labels).loss.backward()
    assert model.reset() == {"forward": steps + 1, "no_grad_forward": 0, "backward": steps + 1}
    best = NormRegularizedAdversarialLoss(model, **SETTINGS[norm], steps=steps,
                                          select_iterate="best")
    best.perturb(images, labels)
    assert model.reset() == dict(peer, no_grad_forward=int(steps > 1))


def test_l1_iterative_keeps_inputs_in_range():
    model = _model()
    images, labels, _ = _batch()
    adv = NormRegularizedAdversarialLoss(
        model, norm="l1", epsilon=0.2, steps=3, input_range=(0.0, 1.0)
    )
    delta = adv.perturb(images, labels)
    moved = images + delta
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    assert float(delta.abs().max()) <= 0.2 + 1e-7


def test_gaze_rejects_iterations():
    with pytest.raises(ValueError, match="only the closed form"):
        NormRegularizedAdversarialLoss(_model(), norm="gaze", epsilon=0.1, steps=3)


# ---------------------------------------------------------------- model state


@pytest.mark.parametrize("norm", ITERATIVE)
def test_inner_loop_leaves_batchnorm_statistics_mode_and_grads_alone(norm, device):
    model = _model().to(device).train()
    model.block1[2].eval()  # a mixed-mode model must stay mixed
    images, labels, _ = (t.to(device) for t in _batch())
    adv = NormRegularizedAdversarialLoss(model, **SETTINGS[norm], steps=3)
    with untouched(model, images, labels):
        adv.perturb(images, labels)
    assert all(p.grad is None for p in model.parameters())
    assert_no_hooks(model)


def test_training_loss_updates_batchnorm_like_one_plain_forward():
    model = _model().train()
    reference = copy.deepcopy(model)
    images, labels, _ = _batch()
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.05, steps=3)
    delta = adv.perturb(images, labels)
    loss = adv(images, labels).loss
    expected = F.cross_entropy(reference(images + delta), labels)
    torch.testing.assert_close(loss, expected)
    for (name, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(ours, theirs, msg=f"buffer {name}")
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_clean_weight_mixes_the_clean_loss():
    model = _model().eval()
    images, labels, _ = _batch()
    adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.05, clean_weight=0.25)
    delta = adv.perturb(images, labels)
    expected = 0.75 * F.cross_entropy(model(images + delta), labels) + 0.25 * F.cross_entropy(
        model(images), labels
    )
    torch.testing.assert_close(adv(images, labels).loss, expected)


def test_custom_per_example_loss_and_a_reduced_one():
    model = _model().eval()
    images, labels, _ = _batch()

    def doubled(logits, y):
        return 2 * F.cross_entropy(logits, y, reduction="none")

    adv = NormRegularizedAdversarialLoss(model, norm="elastic_net", epsilon=0.0, epsilon2=0.1,
                                         loss_fn=doubled)
    _, g = _loss_gradient(model, images, labels)
    torch.testing.assert_close(adv.perturb(images, labels), 2 * 0.1 * 2 * g, rtol=1e-4, atol=1e-7)
    reduced = NormRegularizedAdversarialLoss(model, loss_fn=lambda o, y: F.cross_entropy(o, y))
    with pytest.raises(ValueError, match="one loss per example"):
        reduced(images, labels)


def test_zero_gradient_gives_zero_perturbation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 3))
    nn.init.zeros_(model[1].weight)
    images, labels, mask = _batch()
    for norm, settings in SETTINGS.items():
        for steps in [1, 3] if norm != "gaze" else [1]:
            adv = NormRegularizedAdversarialLoss(model, **settings, steps=steps)
            delta = adv.perturb(images, labels, mask=_mask_for(norm, mask))
            assert torch.equal(delta, torch.zeros_like(images)), (norm, steps)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"norm": "linf"}, "norm must be one of"),
        ({"epsilon": -1.0}, "epsilon must be"),
        ({"steps": 0}, "steps must be"),
        ({"step_size": 0.0}, "step_size must be"),
        ({"clean_weight": 1.5}, "clean_weight"),
        ({"input_range": (1.0, 0.0)}, "input_range"),
        ({"norm": "elastic_net"}, "epsilon2 > 0"),
        ({"select_iterate": "first"}, "select_iterate must be one of"),
        ({"select_iterate": None}, "select_iterate must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormRegularizedAdversarialLoss(_model(), **kwargs)


def test_bad_calls_leave_model_and_inputs_untouched():
    model = _model().train()
    images, labels, mask = _batch()
    gaze = NormRegularizedAdversarialLoss(model, norm="gaze", epsilon=0.1)
    l1 = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.1)
    with untouched(model, images, labels):
        with pytest.raises(ValueError, match="needs a mask"):
            gaze(images, labels)
        with pytest.raises(ValueError, match="mask has shape"):
            gaze(images, labels, mask=mask[:, :, :5])
        with pytest.raises(ValueError, match="only used by norm='gaze'"):
            l1.perturb(images, labels, mask=mask)
        with pytest.raises(ValueError, match="labels must have one entry per example"):
            l1.perturb(images, labels[:2])
        with pytest.raises(TypeError, match="floating-point"):
            l1.perturb(images.long(), labels)
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        NormRegularizedAdversarialLoss(lambda x: x)


# ---------------------------------------------------------------- training hook


@pytest.mark.parametrize("norm", ["l1", "group"])
def test_train_classifier_hook_takes_the_hand_written_step(norm):
    images, labels, _ = _batch(n=8)
    model = _model()
    reference = copy.deepcopy(model)
    adv = NormRegularizedAdversarialLoss(model, **SETTINGS[norm], steps=2)
    history = train_classifier(model, TensorDataset(images, labels), epochs=1, batch_size=8,
                               lr=1e-2, loss=adv, progress=False)
    assert_no_hooks(model)
    reference_loss = NormRegularizedAdversarialLoss(reference, **SETTINGS[norm], steps=2)
    loss = hand_written_step(reference, lambda: reference_loss(images, labels).loss, lr=1e-2)
    assert history[0]["loss"] == pytest.approx(loss, rel=1e-5)
    moved = False
    for (name, ours), theirs, before in zip(
        model.named_parameters(), reference.parameters(), _model().parameters()
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=name)
        moved |= not torch.equal(ours, before)
    assert moved


# ---------------------------------------------------------------- DDP

DDP_CASES = [
    ("adversarial", {"norm": "l1", "epsilon": 0.05, "steps": 2}),
    ("adversarial", {"norm": "group", "epsilon": 0.1, "group_size": 3, "clean_weight": 0.5}),
    ("penalty", {"norm": "elastic_net", "epsilon": 0.05, "epsilon2": 0.1}),
]


def _one_step(model: nn.Module, trained: nn.Module, kind: str, settings: dict, images, labels):
    """One SGD step of ``trained`` (``model`` or its DDP wrapper) with either regularizer."""
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    if kind == "adversarial":
        loss = NormRegularizedAdversarialLoss(trained, **settings)(images, labels).loss
    else:
        logits, penalty = GradientNormPenalty(trained, **settings)(images, labels)
        loss = F.cross_entropy(logits, labels) + penalty
    loss.backward()
    optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _ddp_steps(rank: int, world_size: int, state: dict, images, labels) -> list:
    results = []
    shard = slice(rank * 2, rank * 2 + 2)
    for kind, settings in DDP_CASES:
        model = SimpleCNN(num_classes=3, width=4, batch_norm=False)
        model.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(model)
        results.append(_one_step(model, ddp, kind, settings, images[shard], labels[shard]))
    return results


def test_ddp_steps_match_single_process_steps():
    """Both regularizers under DDP (2 gloo ranks, 2 examples each) = one process on all 4.

    Without BatchNorm every example's perturbation and gradient is independent of the
    batch, and the mean over 4 examples is the mean of the two shards' means.
    """
    images, labels, _ = _batch(n=4)
    state = copy.deepcopy(_model(batch_norm=False).state_dict())
    results = run_distributed(_ddp_steps, state, images, labels, world_size=2)
    for case, (kind, settings) in enumerate(DDP_CASES):
        model = _model(batch_norm=False)
        model.load_state_dict(state)
        expected = _one_step(model, model, kind, settings, images, labels)
        for name, value in expected.items():
            for rank in range(2):
                torch.testing.assert_close(
                    results[rank][case][name], value, rtol=1e-4, atol=1e-6,
                    msg=f"{kind} {settings['norm']} rank {rank} {name}",
                )


# ---------------------------------------------------------------- effect (seeded, small)


def _saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Simple-gradient maps: d logit_y / d x, eval mode."""
    model.eval()
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, labels[:, None]).sum(), x)
    return g


@pytest.fixture(scope="module")
def shapes_runs() -> dict:
    """A plain-trained SimpleCNN fine-tuned for 2 epochs three ways from the same weights.

    Fine-tuning one shared, well-trained model keeps the test short and the comparison
    controlled: the three models differ only in the loss of the last two epochs.
    """
    from captum_regularized.datasets import SyntheticShapes
    from captum_regularized.metrics import gini_sparseness
    from captum_regularized.regularizers.adversarial_norms import group_norms

    settings = {"image_size": 32, "num_classes": 3, "num_distractors": 1, "noise": 0.05}
    train_images, train_labels, _ = SyntheticShapes(512, seed=0, **settings).render(range(512))
    test_images, test_labels, _ = SyntheticShapes(256, seed=1, **settings).render(range(256))
    train = TensorDataset(train_images, train_labels)
    torch.manual_seed(0)
    base = SimpleCNN(num_classes=3, width=8)
    train_classifier(base, train, epochs=6, batch_size=32, lr=1e-2, progress=False)
    losses = {
        "plain": lambda m: None,
        "l1": lambda m: NormRegularizedAdversarialLoss(m, norm="l1", epsilon=0.005),
        "group": lambda m: NormRegularizedAdversarialLoss(
            m, norm="group", epsilon=0.03, group_size=4
        ),
    }
    runs = {}
    for name, make_loss in losses.items():
        model = copy.deepcopy(base)
        train_classifier(model, train, epochs=2, batch_size=32, lr=3e-3, loss=make_loss(model),
                         progress=False, seed=1)
        g = _saliency(model, test_images, test_labels)
        with torch.no_grad():
            accuracy = float((model(test_images).argmax(1) == test_labels).float().mean())
        runs[name] = {
            "accuracy": accuracy,
            "gini": float(gini_sparseness(g).mean()),
            "group_gini": float(gini_sparseness(group_norms(g, 4)).mean()),
        }
    return runs


@pytest.mark.slow
def test_l1_training_makes_gradient_maps_sparser(shapes_runs):
    plain, l1 = shapes_runs["plain"], shapes_runs["l1"]
    assert plain["accuracy"] > 0.9  # the comparison is between working classifiers
    assert l1["gini"] > plain["gini"] + 0.03, shapes_runs
    assert l1["accuracy"] >= plain["accuracy"] - 0.03, shapes_runs


@pytest.mark.slow
def test_group_training_makes_gradient_maps_group_sparser(shapes_runs):
    plain, group = shapes_runs["plain"], shapes_runs["group"]
    assert group["group_gini"] > plain["group_gini"] + 0.05, shapes_runs
    assert group["accuracy"] >= plain["accuracy"] - 0.03, shapes_runs


def test_runs_under_autocast():
    model = _model()
    images, labels, _ = _batch()
    adv = NormRegularizedAdversarialLoss(model, norm="group", epsilon=0.1, group_size=3, steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = adv.perturb(images, labels)
        loss = adv(images, labels).loss
    assert delta.dtype == images.dtype and bool(torch.isfinite(delta).all())
    assert bool(torch.isfinite(loss))
    patches = F.avg_pool2d(delta.pow(2), 3, ceil_mode=True, divisor_override=1)
    assert float(patches.sqrt().max()) <= 0.1 + 1e-5
