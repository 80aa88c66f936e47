"""The top-k interpretation attack against a per-example reference loop and known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import nn

from captum_regularized.metrics import interpretation_attack
from tests.model_checks import untouched

SIZE = 8


class TinyCNN(nn.Module):
    """conv-ReLU-conv-ReLU-linear, the ReLUs as modules or as functional calls."""

    def __init__(self, relu: str = "module") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * SIZE * SIZE, 3)
        self.relu = relu
        self.act1 = nn.ReLU(inplace=relu == "inplace")
        self.act2 = nn.ReLU(inplace=relu == "inplace")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu == "functional":
            x = torch.relu_(self.conv2(F.relu(self.conv1(x))))
        elif self.relu == "method":
            x = self.conv2(self.conv1(x).relu()).relu_()
        elif self.relu == "written_in_place":  # the in-place calls' results are not used
            x = self.conv1(x)
            F.relu(x, inplace=True)
            x = self.conv2(x)
            torch.relu_(x)
        else:
            x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(x.flatten(1))


def _model(relu: str = "module", seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(relu).eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the reference


def _softplus_copy(model: nn.Module, beta: float) -> nn.Module:
    """The surrogate built the other way: a copy whose nn.ReLU modules are nn.Softplus."""
    surrogate = copy.deepcopy(model)
    for name, module in list(surrogate.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta=beta))
        del name
    return surrogate


def _saliency(model: nn.Module, image: torch.Tensor, label: int, graph: bool = False):
    """Sum over channels of |d score / d image| of one image, flattened ``(H*W,)``."""
    image = image.detach().clone().requires_grad_(True)
    score = model(image[None])[0, label]
    (grad,) = torch.autograd.grad(score, image, create_graph=graph)
    return grad.abs().sum(0).flatten(), image


def _top(values: torch.Tensor, k: int) -> set[int]:
    order = sorted(range(len(values)), key=lambda i: -float(values[i]))  # stable: raster ties
    return set(order[:k])


def _reference(model, image, *, epsilon, steps, step_size, k, beta, bounds):
    """Algorithm of the paper for one image, written out; also counts rejected iterates."""
    surrogate = _softplus_copy(model, beta)
    with torch.no_grad():
        label = int(model(image[None]).argmax())
    clean, _ = _saliency(model, image, label)
    region = _top(clean, k)
    in_region = torch.zeros(SIZE * SIZE)
    in_region[list(region)] = 1.0
    best, best_hits = image, k
    best_share = float((clean * in_region).sum() / clean.sum())
    x, rejected = image, 0
    for _ in range(steps):
        saliency, leaf = _saliency(surrogate, x, label, graph=True)
        dissimilarity = -(saliency * in_region).sum() / saliency.sum()
        (ascent,) = torch.autograd.grad(dissimilarity, leaf)
        x = x + step_size * ascent.sign()
        x = torch.minimum(torch.maximum(x, image - epsilon), image + epsilon)
        x = x.clamp(*bounds)
        with torch.no_grad():
            kept = int(model(x[None]).argmax()) == label
        maps, _ = _saliency(model, x, label)
        hits = len(_top(maps, k) & region)
        share = float((maps * in_region).sum() / maps.sum())
        if not kept:
            rejected += 1
        elif hits < best_hits or (hits == best_hits and share < best_share):
            best, best_hits, best_share = x, hits, share
    return best, best_hits / k, rejected


@pytest.mark.parametrize("epsilon", [0.05, 0.4])
def test_matches_the_per_example_reference(epsilon):
    model, x = _model(), _images(3)
    settings = dict(epsilon=epsilon, steps=3, step_size=epsilon / 2, k=6, beta=5.0)
    result = interpretation_attack(model, x, input_range=(0.0, 1.0), **settings)
    rejected = 0
    for b in range(len(x)):
        best, intersection, rejections = _reference(model, x[b], bounds=(0.0, 1.0), **settings)
        rejected += rejections
        torch.testing.assert_close(result.adversarial_inputs[b], best, rtol=0, atol=1e-6)
        assert result.intersection[b].item() == pytest.approx(intersection)
    assert result.label_kept.all()
    if epsilon > 0.1:  # the large ball does flip labels: the rule was exercised
        assert rejected > 0


@pytest.mark.parametrize("relu", ["functional", "method", "inplace", "written_in_place"])
def test_functional_and_in_place_relus_get_the_surrogate_too(relu):
    x = _images(3)
    settings = dict(epsilon=0.05, steps=3, k=6, input_range=(0.0, 1.0))
    expected = interpretation_attack(_model("module"), x, **settings)
    got = interpretation_attack(_model(relu), x, **settings)
    torch.testing.assert_close(got.perturbation, expected.perturbation, rtol=0, atol=1e-6)
    assert torch.equal(got.intersection, expected.intersection)
    assert got.perturbation.abs().amax() > 0


def test_a_linear_models_map_cannot_move():
    """The saliency of a linear model is its weight row: constant, so nothing changes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4)).eval()
    x = _images(5)
    result = interpretation_attack(model, x, epsilon=0.1, steps=5, k=8)
    assert result.intersection.tolist() == [1.0] * 5
    assert result.intersection_before.tolist() == [1.0] * 5
    assert result.label_kept.all()
    assert torch.equal(result.perturbation, torch.zeros_like(x))


def _random_noise_intersection(model, x, epsilon, k, draws=4):
    """Top-k intersection after random sign noise of size epsilon (the paper's baseline)."""
    generator = torch.Generator().manual_seed(7)
    values = []
    for b in range(len(x)):
        with torch.no_grad():
            label = int(model(x[b:b + 1]).argmax())
        region = _top(_saliency(model, x[b], label)[0], k)
        for _ in range(draws):
            signs = torch.randint(0, 2, x[b].shape, generator=generator) * 2.0 - 1.0
            noisy = (x[b] + epsilon * signs).clamp(0, 1)
            values.append(len(_top(_saliency(model, noisy, label)[0], k) & region) / k)
    return sum(values) / len(values)


def test_the_attack_beats_random_noise_of_the_same_size():
    model, x = _model(seed=3), _images(12, seed=4)
    epsilon, k = 0.03, 8
    result = interpretation_attack(model, x, epsilon=epsilon, steps=12, k=k,
                                   input_range=(0.0, 1.0))
    random = _random_noise_intersection(model, x, epsilon, k)
    attacked = float(result.intersection.mean())
    assert attacked < random - 0.05, (attacked, random)
    assert result.label_kept.all()


def test_label_kept_perturbation_and_range_checked_independently():
    model, x = _model(seed=5), _images(6, seed=6)
    epsilon = 0.3
    result = interpretation_attack(model, x, epsilon=epsilon, steps=4, k=6,
                                   input_range=(0.0, 1.0))
    with torch.no_grad():
        assert torch.equal(model(result.adversarial_inputs).argmax(1), model(x).argmax(1))
    assert result.label_kept.dtype == torch.bool and result.label_kept.all()
    assert float(result.perturbation.abs().amax()) <= epsilon + 1e-6
    assert result.adversarial_inputs.min() >= 0 and result.adversarial_inputs.max() <= 1
    torch.testing.assert_close(result.adversarial_inputs - x, result.perturbation)
    assert ((result.intersection >= 0) & (result.intersection <= 1)).all()


def test_captum_saliency_as_explain_scores_the_same_map():
    """Captum's |gradient| summed over channels is the default map."""
    model, x = _model(), _images(3)
    settings = dict(epsilon=0.05, steps=2, k=6, input_range=(0.0, 1.0))
    default = interpretation_attack(model, x, **settings)
    with_captum = interpretation_attack(model, x, explain=Saliency(model), **settings)
    torch.testing.assert_close(with_captum.perturbation, default.perturbation, rtol=0, atol=1e-6)
    assert torch.equal(with_captum.intersection, default.intersection)


def test_a_fixed_explain_map_stays_and_a_random_one_is_unstable_before_any_attack():
    model, x = _model(), _images(4)
    fixed = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def explain(inputs, targets):
        return fixed.expand(len(inputs), -1, -1)

    result = interpretation_attack(model, x, epsilon=0.1, steps=2, k=6, explain=explain)
    assert result.intersection.tolist() == [1.0] * 4
    noisy = interpretation_attack(model, x, epsilon=0.1, steps=1, k=6,
                                  explain=lambda inputs, targets: torch.rand_like(inputs))
    assert noisy.intersection_before.mean() < 1


def test_batched_chunked_and_one_at_a_time_agree():
    model, x = _model(), _images(4)
    settings = dict(epsilon=0.05, steps=2, k=6, input_range=(0.0, 1.0))
    whole = interpretation_attack(model, x, **settings)
    chunked = interpretation_attack(model, x, internal_batch_size=3, **settings)
    torch.testing.assert_close(chunked.perturbation, whole.perturbation, rtol=0, atol=1e-6)
    assert torch.equal(chunked.intersection, whole.intersection)
    alone = interpretation_attack(model, x[3:4], **settings)
    torch.testing.assert_close(alone.perturbation[0], whole.perturbation[3], rtol=0, atol=1e-6)


def test_target_none_is_the_predicted_class_and_other_targets_attack_their_map():
    model, x = _model(), _images(3)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    settings = dict(epsilon=0.05, steps=2, k=6)
    default = interpretation_attack(model, x, **settings)
    explicit = interpretation_attack(model, x, target=predicted, **settings)
    assert torch.equal(default.perturbation, explicit.perturbation)
    other = interpretation_attack(model, x, target=(predicted + 1) % 3, **settings)
    assert other.label_kept.all()
    assert not torch.equal(other.perturbation, default.perturbation)


def test_model_and_inputs_left_as_found(cnn):
    x = _images(3)
    with untouched(cnn, x):
        interpretation_attack(cnn, x, epsilon=0.05, steps=2, k=4)
    assert cnn.training
    assert all(p.grad is None for p in cnn.parameters())


def test_no_grad_around_the_call_changes_nothing():
    model, x = _model(), _images(3)
    expected = interpretation_attack(model, x, epsilon=0.05, steps=2, k=6)
    with torch.no_grad():
        got = interpretation_attack(model, x, epsilon=0.05, steps=2, k=6)
    assert torch.equal(got.perturbation, expected.perturbation)


def test_empty_batch_gives_empty_rows():
    result = interpretation_attack(_model(), _images(0), epsilon=0.05, steps=2, k=6)
    assert result.intersection.shape == (0,) and result.perturbation.shape == (0, 3, SIZE, SIZE)
    assert result.label_kept.dtype == torch.bool


def _nan_inputs():
    x = _images(2)
    x[1, 0, 2, 2] = math.nan
    return x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(k=0), ValueError, "k must be in"),
        (dict(k=SIZE * SIZE + 1), ValueError, "k must be in"),
        (dict(k=2.5), TypeError, "k must be an int"),
        (dict(epsilon=0.0), ValueError, "epsilon"),
        (dict(epsilon=-0.1), ValueError, "epsilon"),
        (dict(epsilon=math.nan), ValueError, "epsilon"),
        (dict(epsilon="8/255"), TypeError, "epsilon"),
        (dict(steps=0), ValueError, "steps"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(beta=math.inf), ValueError, "beta"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
        (dict(input_range=(1.0, 0.0)), ValueError, "input_range"),
        (dict(input_range=(0.0, 0.5)), ValueError, "inside input_range"),
        (dict(input_range=0.5), TypeError, "input_range"),
        (dict(explain=3), TypeError, "explain"),
        (dict(target=7), ValueError, "target"),
    ],
)
def test_bad_settings_are_named(kwargs, error, match):
    model, x = _model(), _images(2)
    with untouched(model, x), pytest.raises(error, match=match):
        interpretation_attack(model, x, **{"k": 4, "steps": 1, **kwargs})


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (_nan_inputs(), ValueError, "NaN"),
        (torch.rand(2, 3, SIZE), ValueError, "shape"),
        ((torch.rand(2, 3, SIZE, SIZE) * 255).long(), TypeError, "floating"),
        ([[0.0]], TypeError, "inputs"),
        (torch.rand(2, 3, SIZE, SIZE, device="meta"), ValueError, "device"),
    ],
)
def test_bad_inputs_are_named(inputs, error, match):
    with pytest.raises(error, match=match):
        interpretation_attack(_model(), inputs, k=4, steps=1)


def test_inference_mode_is_named():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        interpretation_attack(_model(), _images(2), k=4, steps=1)
