"""Max-sensitivity against Captum's ``sensitivity_max`` and a per-example loop."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from captum.metrics import sensitivity_max

from captum_regularized.attr import PositiveSaliency
from captum_regularized.metrics import max_sensitivity
from tests.model_checks import untouched

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients:UserWarning"  # Captum Saliency
)


def wobble(inputs, radius):
    """A deterministic perturbation of at most ``radius`` per entry (Captum's signature).

    It depends on an example's values only, not on where its copy sits in the batch, so
    any chunking of the copies perturbs them alike.
    """
    if isinstance(inputs, tuple):
        return tuple(wobble(x, radius) for x in inputs)
    index = torch.arange(inputs[0].numel(), device=inputs.device).view_as(inputs[0])
    return inputs + radius * torch.sin(7.3 * index.to(inputs.dtype) + 100 * inputs)


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(12, 4), torch.nn.Linear(5, 4)

    def forward(self, a, b, scale):
        return torch.tanh(self.a(a.flatten(1)) + self.b(b)) * scale


def _seeded(call, seed=3):
    torch.manual_seed(seed)
    return call()


@pytest.mark.parametrize(
    ("target", "norm"), [(2, "fro"), ([0, 3, 1, 2, 1], "fro"), (torch.tensor([1, 0, 3, 3, 2]), 1.0),
                         ([(0,), (3,), (1,), (2,), (1,)], math.inf)]
)
def test_equals_captum_with_the_same_seed(cnn, target, norm):
    cnn.eval()
    x = torch.rand(5, 3, 8, 8)
    expected = _seeded(lambda: sensitivity_max(Saliency(cnn).attribute, x, target=target,
                                               norm_ord=norm, n_perturb_samples=4))
    got = _seeded(lambda: max_sensitivity(Saliency(cnn), x, target, n_samples=4, norm_ord=norm))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    bound = _seeded(lambda: max_sensitivity(Saliency(cnn).attribute, x, target, n_samples=4,
                                            norm_ord=norm))
    torch.testing.assert_close(bound, expected, rtol=1e-5, atol=1e-6)


def test_equals_captum_with_tuple_inputs_extra_arguments_and_chunks():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    a, b = torch.rand(4, 3, 2, 2), torch.rand(4, 5)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0])[:, None]  # per example
    ig = IntegratedGradients(model)
    kwargs = {"target": [0, 1, 2, 3], "additional_forward_args": (scale,)}
    expected = sensitivity_max(ig.attribute, (a, b), perturb_func=wobble, n_perturb_samples=5,
                               max_examples_per_batch=8, n_steps=5, **kwargs)
    for chunk in (None, 3):
        got = max_sensitivity(ig, (a, b), kwargs["target"], n_samples=5, perturb_func=wobble,
                              additional_forward_args=scale, attribute_kwargs={"n_steps": 5},
                              internal_batch_size=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_matches_a_per_example_loop(cnn, device):
    """Reference: each perturbed copy explained alone (PositiveSaliency maps)."""
    cnn = cnn.to(device).eval()  # in train mode BatchNorm would mix the copies of a chunk
    x = torch.rand(3, 3, 8, 8, device=device)
    target = [3, 0, 2]
    explainer = PositiveSaliency(cnn)
    copies = []

    def uniform(inputs, radius):
        out = inputs + radius * (2 * torch.rand_like(inputs) - 1)
        copies.append(out)
        return out

    with untouched(cnn, x):
        got = max_sensitivity(explainer, x, target, n_samples=3, radius=0.05,
                              perturb_func=uniform, internal_batch_size=4)
    perturbed = torch.cat(copies)  # copy i is a sample of example i // 3
    assert torch.equal(perturbed.sub(x.repeat_interleave(3, 0)).abs().le(0.05),
                       torch.ones_like(perturbed, dtype=torch.bool))
    for b in range(3):
        clean = explainer.attribute(x[b:b + 1], target=target[b]).flatten()
        ratios = [
            float((explainer.attribute(perturbed[i:i + 1], target=target[b]).flatten()
                   - clean).norm() / clean.norm())
            for i in range(3 * b, 3 * b + 3)
        ]
        assert float(got[b]) == pytest.approx(max(ratios), rel=1e-4, abs=1e-6)


def test_none_target_is_the_clean_prediction_and_scale_does_not_matter(cnn):
    x = torch.rand(4, 3, 8, 8)
    predicted = cnn.eval()(x).argmax(1)
    cnn.train()
    explainer = Saliency(cnn)
    plain = _seeded(lambda: max_sensitivity(explainer, x, n_samples=3))
    assert cnn.training
    classes = _seeded(lambda: max_sensitivity(explainer, x, predicted, n_samples=3))
    torch.testing.assert_close(plain, classes)
    doubled = _seeded(lambda: max_sensitivity(
        lambda inputs, target: 2 * explainer.attribute(inputs, target=target), x, predicted,
        n_samples=3))
    torch.testing.assert_close(doubled, classes)
    same_class = _seeded(lambda: max_sensitivity(explainer, x, [1] * 4, n_samples=3))
    torch.testing.assert_close(
        same_class, _seeded(lambda: max_sensitivity(explainer, x, 1, n_samples=3)))


def test_noise_stays_in_the_ball_and_follows_the_generator():
    seen = []

    def identity_map(inputs, target):
        seen.append(inputs)
        return inputs

    x = torch.rand(2, 3, 4, 4) + 1.0
    first = max_sensitivity(identity_map, x, radius=0.1, n_samples=6,
                            generator=torch.Generator().manual_seed(7))
    second = max_sensitivity(identity_map, x, radius=0.1, n_samples=6,
                             generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    noise = seen[1] - x.repeat_interleave(6, dim=0)
    assert float(noise.abs().max()) <= 0.1 + 1e-6 and float(noise.abs().max()) > 0.09
    # The map is the input: the sensitivity is the largest |delta| / |x| of the copies.
    ratios = noise.flatten(1).norm(dim=1) / x.repeat_interleave(6, 0).flatten(1).norm(dim=1)
    torch.testing.assert_close(first, ratios.view(2, 6).amax(1))
    assert max_sensitivity(identity_map, x, radius=0.0).tolist() == [0.0, 0.0]


def test_empty_batch(cnn):
    assert max_sensitivity(Saliency(cnn), torch.rand(0, 3, 8, 8), 1).shape == (0,)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"explain": Saliency}, TypeError, "explain"),
        ({"explain": 3}, TypeError, "explain"),
        ({"explain": lambda inputs, target: inputs.sum()}, ValueError, "explain"),
        ({"explain": lambda inputs, target: [inputs]}, TypeError, "explain"),
        ({"radius": -0.1}, ValueError, "radius"),
        ({"radius": math.nan}, ValueError, "radius"),
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"norm_ord": "nuc"}, ValueError, "norm_ord"),
        ({"target": [0, 1]}, ValueError, "target"),
        ({"target": torch.tensor([[0, 1], [1, 0]])}, ValueError, "target"),
        ({"target": 9}, ValueError, "target"),
        ({"inputs": torch.full((3, 3, 8, 8), math.nan)}, ValueError, "inputs"),
        ({"inputs": torch.zeros(3, 3, 8, 8, dtype=torch.long)}, TypeError, "inputs"),
    ],
)
def test_bad_arguments_are_named(cnn, change, error, match):
    arguments = {"explain": PositiveSaliency(cnn), "inputs": torch.rand(3, 3, 8, 8),
                 "target": 1}
    arguments.update(change)
    arguments.setdefault("n_samples", 2)
    explain = arguments.pop("explain")
    with untouched(cnn, arguments["inputs"]), pytest.raises(error, match=match):
        max_sensitivity(explain, **arguments)
