"""The norms' classes: conjugates, closed-form maximisers, projections, patch grouping."""

from __future__ import annotations

import itertools

import pytest
import torch

from captum_regularized.regularizers import NormRegularizedAdversarialLoss
from captum_regularized.regularizers.adversarial_norms import (
    NORMS,
    AdversarialNorm,
    adversarial_norm,
    group_norms,
)


def _first_order_value(spec: AdversarialNorm, delta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``delta^T g - R(delta)`` per example."""
    return (delta * g).flatten(1).sum(1) - spec.adversary_cost(delta)


def _reference_group_norms(x: torch.Tensor, s: int) -> torch.Tensor:
    """Patch norms by a plain loop over patches (edge patches smaller)."""
    b, c, h, w = x.shape
    rows, cols = -(-h // s), -(-w // s)
    out = torch.zeros(b, c, rows, cols, dtype=x.dtype)
    for i, j in itertools.product(range(rows), range(cols)):
        patch = x[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s]
        out[:, :, i, j] = patch.pow(2).sum((2, 3)).sqrt()
    return out


def _reference_conjugate(spec: AdversarialNorm, g: torch.Tensor, mask=None) -> torch.Tensor:
    """The table of the issue, written out per example with Python loops."""
    values = []
    for i in range(g.shape[0]):
        gi = g[i]
        if spec.norm == "l1":
            values.append(spec.epsilon * gi.abs().sum())
        elif spec.norm == "elastic_net":
            values.append(spec.epsilon * gi.abs().sum() + spec.epsilon2 * (gi**2).sum())
        elif spec.norm == "group":
            values.append(spec.epsilon * _reference_group_norms(gi[None], spec.group_size).sum())
        else:
            norm = gi.pow(2).sum().sqrt()
            weighted = ((1 - 2 * mask[i]) * gi**2).sum()
            values.append(spec.epsilon * weighted / norm if norm > 0 else gi.sum() * 0)
    return torch.stack(values)


# ---------------------------------------------------------------- grouping


@pytest.mark.parametrize("shape,s", [((2, 3, 6, 6), 3), ((2, 2, 7, 5), 3), ((1, 1, 4, 4), 5)])
def test_group_norms_match_a_loop_including_remainder_patches(shape, s):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(group_norms(x, s), _reference_group_norms(x, s))


def test_group_projection_on_hand_made_patches_with_remainders():
    # 3x3 image, group_size 2: patches {rows 0-1, cols 0-1}, {rows 0-1, col 2},
    # {row 2, cols 0-1} and the single pixel {row 2, col 2}.
    delta = torch.tensor(
        [[[[3.0, 4.0, 0.6], [0.0, 0.0, 0.8], [-2.0, 0.0, -5.0]]]], dtype=torch.float64
    )
    out = adversarial_norm("group", 1.0, group_size=2).project(delta)
    expected = torch.tensor(
        [[[[0.6, 0.8, 0.6], [0.0, 0.0, 0.8], [-1.0, 0.0, -1.0]]]], dtype=torch.float64
    )
    # norm 5 -> scaled by 1/5; norm 1 -> kept; norm 2 -> halved; |-5| -> -1.
    torch.testing.assert_close(out, expected)


def test_group_projection_keeps_feasible_patches_and_is_a_projection():
    spec = adversarial_norm("group", 0.5, group_size=3)
    delta = torch.randn(2, 2, 7, 8, dtype=torch.float64)
    once = spec.project(delta)
    assert bool((group_norms(once, 3) <= 0.5 + 1e-12).all())
    torch.testing.assert_close(spec.project(once), once)
    small = 0.01 * delta
    torch.testing.assert_close(spec.project(small), small)


def test_box_projection():
    delta = torch.tensor([[2.0, -3.0, 0.25]])
    expected = torch.tensor([[0.5, -0.5, 0.25]])
    torch.testing.assert_close(adversarial_norm("l1", 0.5).project(delta), expected)


# ------------------------------------------------------- closed forms and duality

NORM_SPECS = [
    adversarial_norm("l1", 0.3),
    adversarial_norm("elastic_net", 0.3, 0.2),
    adversarial_norm("group", 0.3, group_size=2),
    adversarial_norm("gaze", 0.3),
]


@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: s.norm)
def test_conjugate_matches_the_table(spec):
    g = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    mask = (torch.rand(3, 1, 5, 5) > 0.5).double() if spec.norm == "gaze" else None
    torch.testing.assert_close(
        spec.conjugate_penalty(g, mask), _reference_conjugate(spec, g, mask)
    )


@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: s.norm)
def test_first_order_duality(spec):
    """delta*^T g - R(delta*) = R*(g): the closed form attains the conjugate."""
    g = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    mask = torch.rand(4, 1, 5, 5, dtype=torch.float64) if spec.norm == "gaze" else None
    delta = spec.closed_form_maximiser(g, mask)
    torch.testing.assert_close(
        _first_order_value(spec, delta, g), spec.conjugate_penalty(g, mask)
    )


def test_l1_closed_form_beats_every_vertex_of_the_box():
    spec = adversarial_norm("l1", 0.2)
    g = torch.randn(5, 6, dtype=torch.float64)
    best = spec.closed_form_maximiser(g)
    vertices = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)), dtype=torch.float64)
    brute = (0.2 * vertices @ g.T).max(0).values  # linear objective: a vertex is optimal
    torch.testing.assert_close(_first_order_value(spec, best, g), brute)
    inside = 0.2 * (2 * torch.rand(1000, 6, dtype=torch.float64) - 1)
    assert bool(((inside @ g.T) <= _first_order_value(spec, best, g) + 1e-12).all())


def test_elastic_net_closed_form_beats_a_grid_search():
    spec = adversarial_norm("elastic_net", 0.1, 0.3)
    g = torch.randn(3, 4, dtype=torch.float64)
    grid = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    # The objective is a sum over coordinates: maximise each one on the grid.
    per_coord = grid[:, None, None] * g - (grid[:, None, None].abs() - 0.1).clamp_min(0) ** 2 / (
        4 * 0.3
    )
    brute = per_coord.max(0).values.sum(1)
    closed = _first_order_value(spec, spec.closed_form_maximiser(g), g)
    assert bool((closed >= brute - 1e-12).all())
    torch.testing.assert_close(closed, brute, atol=1e-6, rtol=0)


def test_group_closed_form_beats_projected_gradient_ascent():
    spec = adversarial_norm("group", 0.4, group_size=2)
    g = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    delta = torch.zeros_like(g)
    for _ in range(200):  # plain projected gradient ascent, projection written here
        delta = delta + 0.05 * g
        norms = _reference_group_norms(delta, 2)
        scale = torch.clamp(0.4 / norms, max=1.0)
        delta = delta * scale.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :3, :3]
    closed = _first_order_value(spec, spec.closed_form_maximiser(g), g)
    pga = _first_order_value(spec, delta, g)
    assert bool((closed >= pga - 1e-9).all())
    torch.testing.assert_close(closed, pga, atol=1e-6, rtol=0)
    assert bool((group_norms(spec.closed_form_maximiser(g), 2) <= 0.4 + 1e-12).all())


def test_gaze_closed_form_points_out_of_the_mask():
    spec = adversarial_norm("gaze", 0.5)
    g = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[:, :, :2] = 1.0
    delta = spec.closed_form_maximiser(g, mask)
    unit = g / g.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(delta, 2 * 0.5 * (0.5 - mask) * unit)


# ---------------------------------------------------------------- zero gradients


@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: s.norm)
def test_zero_gradient_gives_zero_perturbation_and_finite_penalty_gradient(spec):
    g = torch.zeros(2, 1, 4, 4, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4) if spec.norm == "gaze" else None
    delta = spec.closed_form_maximiser(g, mask)
    assert torch.equal(delta, torch.zeros_like(delta))
    penalty = spec.conjugate_penalty(g, mask)
    assert torch.equal(penalty, torch.zeros(2))
    (grad,) = torch.autograd.grad(penalty.sum(), g)
    assert bool(torch.isfinite(grad).all())
    assert torch.equal(spec.project(torch.zeros(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4))
    assert bool(torch.isfinite(spec.ascent_step(torch.zeros(2, 1, 4, 4), 0.1)).all())


# ---------------------------------------------------------------- ascent pieces


def test_ascent_step_directions():
    d = torch.tensor([[[[3.0, 0.0, -1.0], [4.0, 0.0, 0.0]]]])
    torch.testing.assert_close(adversarial_norm("l1", 1.0).ascent_step(d, 0.5), 0.5 * d.sign())
    grouped = adversarial_norm("group", 1.0, group_size=2).ascent_step(d, 2.0)
    torch.testing.assert_close(grouped, torch.tensor([[[[1.2, 0.0, -2.0], [1.6, 0.0, 0.0]]]]))
    l2 = adversarial_norm("elastic_net", 1.0, 0.1).ascent_step(d, 1.0)
    torch.testing.assert_close(l2.flatten(1).norm(dim=1), torch.ones(1))


def test_elastic_net_cost_gradient_matches_autograd():
    spec = adversarial_norm("elastic_net", 0.2, 0.3)
    delta = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(spec.adversary_cost(delta).sum(), delta)
    torch.testing.assert_close(spec.adversary_cost_gradient(delta.detach()), auto)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"norm": "l2", "epsilon": 0.1}, ValueError, "norm must be one of"),
        ({"norm": "l1", "epsilon": -0.1}, ValueError, "epsilon must be"),
        ({"norm": "l1", "epsilon": float("nan")}, ValueError, "epsilon must be"),
        ({"norm": "elastic_net", "epsilon": 0.1}, ValueError, "epsilon2 > 0"),
        ({"norm": "l1", "epsilon": 0.1, "epsilon2": 0.1}, ValueError, "epsilon2 is only"),
        ({"norm": "group", "epsilon": 0.1, "group_size": 0}, ValueError, "group_size"),
        ({"norm": "group", "epsilon": 0.1, "group_size": 2.5}, TypeError, "group_size"),
        ({"norm": "l1", "epsilon": "0.1"}, TypeError, "epsilon must be a float"),
    ],
)
def test_bad_specs(kwargs, error, match):
    with pytest.raises(error, match=match):
        adversarial_norm(**kwargs)


def test_mask_checks():
    like = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="needs a mask"):
        adversarial_norm("gaze", 0.1).check_mask(None, like)
    with pytest.raises(ValueError, match="only used by norm='gaze'"):
        adversarial_norm("l1", 0.1).check_mask(torch.ones(2, 1, 4, 4), like)
    with pytest.raises(ValueError, match="mask has shape"):
        adversarial_norm("gaze", 0.1).check_mask(torch.ones(2, 1, 5, 4), like)
    with pytest.raises(ValueError, match="mask has shape"):
        adversarial_norm("gaze", 0.1).check_mask(torch.ones(2, 4, 4), like)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adversarial_norm("gaze", 0.1).check_mask(2 * torch.ones(2, 1, 4, 4), like)
    with pytest.raises(ValueError, match="no NaN"):
        adversarial_norm("gaze", 0.1).check_mask(torch.full((2, 1, 4, 4), float("nan")), like)
    out = adversarial_norm("gaze", 0.1).check_mask(torch.ones(2, 1, 4, 4, dtype=torch.bool), like)
    assert out.dtype == torch.float32


def test_group_needs_images():
    with pytest.raises(ValueError, match="image-shaped"):
        adversarial_norm("group", 0.1).conjugate_penalty(torch.zeros(2, 5))


def test_registry_maps_every_norm_string_to_its_class():
    assert tuple(NORMS) == ("l1", "elastic_net", "group", "gaze")
    for name, cls in NORMS.items():
        norm = adversarial_norm(name, 0.1, 0.1 if name == "elastic_net" else 0.0)
        assert type(norm) is cls and norm.norm == name
        assert f"``{name}``" in NormRegularizedAdversarialLoss.__doc__  # its table row
    assert [name for name, cls in NORMS.items() if not cls.iterative] == ["gaze"]
    with pytest.raises(ValueError, match="norm must be one of"):
        adversarial_norm(None, 0.1)
