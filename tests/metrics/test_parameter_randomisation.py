"""Model-parameter and data randomisation tests against scipy, a brute-force loop and Quantus."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from captum.attr import Saliency
from torch import nn

from captum_regularized import attr
from captum_regularized.metrics import (
    MapSimilarity,
    data_randomisation,
    map_similarity,
    model_parameter_randomisation,
)
from captum_regularized.models import SimpleCNN
from tests.model_checks import untouched

# SimpleCNN's modules with parameters, from the output back (conv, BatchNorm per block).
LAYERS = [
    "classifier", "block3.1", "block3.0", "block2.1", "block2.0",
    "block1.1", "block1.0", "stem.1", "stem.0",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """The models are tiny: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def signed_saliency(model, inputs, target):
    return Saliency(model).attribute(inputs, target=target, abs=False)


@pytest.fixture
def setting():
    """A tiny SimpleCNN in *train* mode (BatchNorm not at its reset values), 12x12 images
    and their classes."""
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=3, width=2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.rand(3, 3, 12, 12)
    return model, x, torch.tensor([0, 1, 2])


# ---------------------------------------------------------------- the similarities


def _scipy_spearman(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    out = []
    for u, v in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy()):
        constant = np.ptp(u) == 0 or np.ptp(v) == 0  # scipy: NaN and a warning; ours: 0
        out.append(0.0 if constant else float(scipy.stats.spearmanr(u, v)[0]))
    return out


def _reference_ssim(a: torch.Tensor, b: torch.Tensor, radius: int) -> list[float]:
    """Wang et al. with scipy's Gaussian filter (sigma 1.5): filter the whole map, keep the
    positions whose window lies inside it, average there and over channels."""
    values = []
    for u, v in zip(a.double().numpy(), b.double().numpy()):
        u, v = np.abs(u), np.abs(v)
        u = (u - u.min()) / (u.max() - u.min()) if u.max() > u.min() else np.zeros_like(u)
        v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
        u, v = u.reshape(-1, *u.shape[-2:]), v.reshape(-1, *v.shape[-2:])
        per_channel = []
        for p, q in zip(u, v):
            def blur(image):
                return scipy.ndimage.gaussian_filter(image, 1.5, radius=radius)
            mp, mq = blur(p), blur(q)
            vp, vq, cpq = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
            c1, c2 = 0.01**2, 0.03**2
            s = (2 * mp * mq + c1) * (2 * cpq + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))
            per_channel.append(s[radius:-radius, radius:-radius].mean())
        values.append(float(np.mean(per_channel)))
    return values


def test_spearman_matches_scipy_with_ties_and_constant_maps():
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-3, 4, (4, 2, 5, 6), generator=gen).float()  # many ties, signs
    b = torch.randint(-3, 4, (4, 2, 5, 6), generator=gen).float()
    b[3] = 2.0  # constant: no ranking, correlation 0
    result = map_similarity(a, b)
    torch.testing.assert_close(result.spearman, torch.tensor(_scipy_spearman(a, b)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(result.spearman_abs,
                               torch.tensor(_scipy_spearman(a.abs(), b.abs())), atol=1e-5, rtol=0)
    assert result.spearman[3] == 0 and result.cosine.isfinite().all()


def test_ssim_matches_a_scipy_reference():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 2, 16, 18, generator=gen)
    b = a + 0.7 * torch.randn(3, 2, 16, 18, generator=gen)
    torch.testing.assert_close(map_similarity(a, b).ssim,
                               torch.tensor(_reference_ssim(a, b, radius=5)), atol=1e-5, rtol=0)
    # Maps smaller than the 11x11 window use the largest odd window that fits (7x7).
    small_a, small_b = a[:, 0, :7, :9], b[:, 0, :7, :9]
    torch.testing.assert_close(map_similarity(small_a, small_b).ssim,
                               torch.tensor(_reference_ssim(small_a, small_b, radius=3)),
                               atol=1e-5, rtol=0)


def test_cosine_and_self_similarity():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 9, 9, generator=gen), torch.randn(4, 9, 9, generator=gen)
    expected = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    torch.testing.assert_close(map_similarity(a, b).cosine, expected)
    for values in map_similarity(a, a):
        torch.testing.assert_close(values, torch.ones(4))
    flipped = map_similarity(a, -a)
    assert torch.allclose(flipped.spearman, -torch.ones(4))
    assert torch.allclose(flipped.spearman_abs, torch.ones(4))  # same magnitudes


# ---------------------------------------------------------------- the test itself


def _brute_force(model, x, target, seeds, cascading):
    """One fresh copy per step; layers re-initialised by hand with torch.manual_seed."""
    reference = copy.deepcopy(model).eval()
    original = signed_saliency(reference, x.clone().requires_grad_(), target).detach()
    maps = []
    for k in range(len(LAYERS)):
        randomised = copy.deepcopy(reference)
        for j in range(k + 1) if cascading else [k]:
            with torch.random.fork_rng():
                torch.manual_seed(seeds[j])
                randomised.get_submodule(LAYERS[j]).reset_parameters()
        maps.append(signed_saliency(randomised, x.clone().requires_grad_(), target).detach())
    return original, maps


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_matches_a_brute_force_loop(setting, mode):
    model, x, target = setting
    with untouched(model, x):
        result = model_parameter_randomisation(model, x, target, signed_saliency, mode=mode)
    assert list(result.layers) == LAYERS and result.mode == mode
    original, maps = _brute_force(model, x, target, result.seeds, mode == "cascading")
    for name, randomised in zip(LAYERS, maps):
        got = result.scores[name]
        torch.testing.assert_close(
            got.spearman, torch.tensor(_scipy_spearman(original, randomised)), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            got.spearman_abs,
            torch.tensor(_scipy_spearman(original.abs(), randomised.abs())), atol=1e-5, rtol=0,
        )
        torch.testing.assert_close(got.ssim, torch.tensor(_reference_ssim(original, randomised, 5)),
                                   atol=1e-5, rtol=0)
        expected = torch.nn.functional.cosine_similarity(original.flatten(1),
                                                         randomised.flatten(1), dim=1)
        torch.testing.assert_close(got.cosine, expected, atol=1e-5, rtol=0)
    # Randomising the trained parameters changes the maps.
    assert (result.curve("spearman_abs") < 0.99).any()


def test_agrees_with_quantus_mprt(setting):
    """Quantus seeds ``torch.manual_seed(seed + 1)`` before every ``reset_parameters()``:
    our per-layer seeds ``[43] * L`` reproduce its default ``seed=42`` exactly, so the
    per-example Spearman correlations agree (its ``abs`` / ``normalise`` switches give the
    absolute / signed ones; rescaling by the maximum leaves ranks unchanged)."""
    quantus = pytest.importorskip("quantus")
    model, x, target = setting
    model.eval()

    def quantus_explain(model, inputs, targets, **kwargs):
        t = torch.as_tensor(inputs).requires_grad_()
        return signed_saliency(model, t, torch.as_tensor(targets)).detach().numpy()

    # Quantus's orders: ours with the default layers, or them reversed for "bottom_up".
    cases = [("top_down", "cascading", LAYERS, (True, False)),
             ("independent", "independent", LAYERS, (True,)),
             ("bottom_up", "cascading", LAYERS[::-1], (False,))]
    for order, mode, layers, switches in cases:
        ours = model_parameter_randomisation(model, x, target, signed_saliency, mode=mode,
                                             layers=layers, seed=[43] * len(layers))
        for absolute in switches:
            field = "spearman_abs" if absolute else "spearman"
            metric = quantus.MPRT(layer_order=order, abs=absolute, normalise=absolute,
                                  disable_warnings=True, display_progressbar=False)
            with torch.random.fork_rng():  # Quantus reseeds the global generator
                theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                                explain_func=quantus_explain)
            np.testing.assert_allclose(theirs.pop("original"), 1.0, atol=1e-12)
            assert sorted(theirs) == sorted(layers)
            for name, values in theirs.items():
                torch.testing.assert_close(getattr(ours.scores[name], field),
                                           torch.tensor(values, dtype=torch.float32),
                                           atol=1e-5, rtol=0, msg=f"{order} {field} {name}")


def test_properties_of_the_two_modes(setting):
    model, x, target = setting
    cascading = model_parameter_randomisation(model, x, target, Saliency)
    independent = model_parameter_randomisation(model, x, target, Saliency, mode="independent")
    assert cascading.seeds == independent.seeds
    # The first step randomises the same single layer in both modes.
    for a, b in zip(cascading.scores[LAYERS[0]], independent.scores[LAYERS[0]]):
        torch.testing.assert_close(a, b)
    # At the last step every layer is random in one mode, only the first conv in the other.
    last = LAYERS[-1]
    assert not torch.allclose(cascading.scores[last].ssim, independent.scores[last].ssim)
    # Same seed, same answer; another seed, other parameters.
    again = model_parameter_randomisation(model, x, target, Saliency)
    other = model_parameter_randomisation(model, x, target, Saliency, seed=1)
    torch.testing.assert_close(again.curve("cosine"), cascading.curve("cosine"))
    assert not torch.allclose(other.curve("cosine"), cascading.curve("cosine"))
    assert cascading.curve("ssim").shape == (len(LAYERS), 3)


def test_a_map_blind_to_the_model_scores_one_everywhere(setting):
    model, x, target = setting
    result = model_parameter_randomisation(model, x, target, lambda m, inputs, t: inputs * 1)
    for similarity in MapSimilarity._fields:
        torch.testing.assert_close(result.curve(similarity), torch.ones(len(LAYERS), 3))


def test_class_callable_kwargs_and_default_target(setting):
    model, x, target = setting
    by_class = model_parameter_randomisation(model, x, target, Saliency,
                                             explain_kwargs={"abs": False})
    by_function = model_parameter_randomisation(model, x, target, signed_saliency)
    for name in LAYERS:
        for a, b in zip(by_class.scores[name], by_function.scores[name]):
            torch.testing.assert_close(a, b)
    predicted = copy.deepcopy(model).eval()(x).argmax(1)
    default = model_parameter_randomisation(model, x, None, attr.PositiveSaliency)
    explicit = model_parameter_randomisation(model, x, predicted, attr.PositiveSaliency)
    torch.testing.assert_close(default.curve("ssim"), explicit.curve("ssim"))


def _recorder(states):
    def explain(model, inputs, target):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        assert not model.training, "the maps must come from an eval-mode copy"
        return signed_saliency(model, inputs, target)

    return explain


def test_independent_mode_randomises_one_layer_at_a_time(setting):
    model, x, target = setting
    states: list[dict[str, torch.Tensor]] = []
    layers = [model.classifier, "block2.1", model.stem[0]]
    model_parameter_randomisation(model, x, target, _recorder(states), layers=layers,
                                  mode="independent")
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in states[0].items())
    for state, prefix in zip(states[1:], ["classifier.", "block2.1.", "stem.0."]):
        changed = {k for k, v in state.items() if not torch.equal(v, trained[k])}
        assert changed and all(k.startswith(prefix) for k in changed), changed


def test_modules_without_reset_parameters_get_a_seeded_normal_draw():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1, 400))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(nn.Flatten(), Scale(), nn.Linear(400, 2)).eval()
    x = torch.rand(2, 1, 20, 20)
    states: list[dict[str, torch.Tensor]] = []
    result = model_parameter_randomisation(model, x, 0, _recorder(states), layers=["1"],
                                           seed=[7])
    expected = torch.empty(1, 400)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        expected.normal_(0, 1 / 20)  # fan_in = 400 elements of one slice along dim 0
    torch.testing.assert_close(states[1]["1.weight"], expected)
    assert result.layers == ("1",)


def test_model_and_global_generators_left_as_found(setting, device):
    model, x, target = setting
    model, x, target = model.to(device), x.to(device), target.to(device)
    cpu_state = torch.get_rng_state()
    with untouched(model, x):
        result = model_parameter_randomisation(model, x, target, Saliency, mode="independent")
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert all(model.training for model in model.modules())
    for values in result.scores.values():
        assert all(v.device == x.device and v.dtype == torch.float32 for v in values)


def test_data_randomisation(setting):
    model, x, target = setting
    torch.manual_seed(1)
    shuffled = SimpleCNN(num_classes=3, width=2)
    with untouched(model, x), untouched(shuffled):
        result = data_randomisation(model, shuffled, x, target, signed_saliency)
    first = signed_saliency(copy.deepcopy(model).eval(), x.clone().requires_grad_(), target)
    second = signed_saliency(copy.deepcopy(shuffled).eval(), x.clone().requires_grad_(), target)
    for got, expected in zip(result, map_similarity(first.detach(), second.detach())):
        torch.testing.assert_close(got, expected)
    same = data_randomisation(model, copy.deepcopy(model), x, target, Saliency)
    for values in same:
        torch.testing.assert_close(values, torch.ones(3))


def test_empty_batch_autocast_and_inference_tensors(setting):
    model, x, target = setting
    with torch.inference_mode():
        loaded = x.clone()
    expected = model_parameter_randomisation(model, x, target, Saliency, layers=LAYERS[:2])
    got = model_parameter_randomisation(model, loaded, target, Saliency, layers=LAYERS[:2])
    torch.testing.assert_close(got.curve("spearman"), expected.curve("spearman"))
    empty = model_parameter_randomisation(model, x[:0], target[:0], Saliency)
    assert empty.layers == tuple(LAYERS) and empty.scores["stem.0"].ssim.shape == (0,)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = model_parameter_randomisation(model, x, target, Saliency, layers=LAYERS[:2])
    assert all(v.dtype == torch.float32 and v.isfinite().all()
               for values in result.scores.values() for v in values)


# ---------------------------------------------------------------- bad input


def _explain_returning(bad):
    calls = []

    def explain(model, inputs, target):
        calls.append(1)
        maps = signed_saliency(model, inputs, target)
        return bad(maps) if len(calls) > 1 else maps

    return explain


@pytest.mark.parametrize(
    ("explain", "match"),
    [
        (lambda m, x, t: signed_saliency(m, x, t)[:2], r"explain.*original model.*batch size"),
        (lambda m, x, t: torch.zeros(3, 12), r"explain.*original model.*shape"),
        (_explain_returning(lambda maps: maps[:, :1]), r"explain.*'classifier' randomised.*shape"),
        (_explain_returning(lambda maps: maps * float("nan")), r"explain.*classifier.*NaN"),
    ],
    ids=["batch", "rank", "shape-after-randomisation", "nan"],
)
def test_bad_maps_are_named(setting, explain, match):
    model, x, target = setting
    with untouched(model, x), pytest.raises(ValueError, match=match):
        model_parameter_randomisation(model, x, target, explain)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": ["stem.2"]}, ValueError, r"'stem.2' \(ReLU\) has no parameters"),
        ({"layers": ["block1"]}, ValueError, r"'block1' \(Sequential\) has no parameters"),
        ({"layers": ["nope"]}, ValueError, r"'nope' is not a module"),
        ({"layers": ["stem.0", "stem.0"]}, ValueError, r"'stem.0' is given twice"),
        ({"layers": [nn.Linear(1, 1)]}, ValueError, r"Linear is not a module of the model"),
        ({"mode": "bottom_up"}, ValueError, r"mode"),
        ({"seed": [1, 2]}, ValueError, r"seed.*9 ints"),
        ({"ssim_window": 4}, ValueError, r"ssim_window"),
    ],
)
def test_bad_arguments_are_named(setting, kwargs, error, match):
    model, x, target = setting
    with untouched(model, x), pytest.raises(error, match=match):
        model_parameter_randomisation(model, x, target, Saliency, **kwargs)


def test_bad_explain_inputs_and_modes(setting):
    model, x, target = setting
    with untouched(model, x):
        with pytest.raises(TypeError, match="not a Saliency object bound to a model"):
            model_parameter_randomisation(model, x, target, Saliency(model))
        with pytest.raises(TypeError, match="explain must be"):
            model_parameter_randomisation(model, x, target, "saliency")
        nan = x.clone()
        nan[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="inputs"):
            model_parameter_randomisation(model, nan, target, Saliency)
        with pytest.raises(ValueError, match="target"):
            model_parameter_randomisation(model, x, torch.tensor([0, 1, 5]), Saliency)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            model_parameter_randomisation(model, x, target, Saliency)

        def failing(m, inputs, t):
            raise KeyError("explain failed")

        with pytest.raises(KeyError):
            model_parameter_randomisation(model, x, target, failing)
        with pytest.raises(ValueError, match="same shape"):
            map_similarity(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
