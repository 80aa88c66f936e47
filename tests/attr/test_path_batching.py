"""RSI-Grad-CAM's path batching and the layer tap it shares with GuidedGradCam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import HookBag
from captum_regularized.attr.rsi_grad_cam.path_batching import (
    expand_for_steps,
    path_points,
    plan_path,
    take_examples,
)
from tests.model_checks import assert_no_hooks


@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("n_steps", [1, 4, 9])
@pytest.mark.parametrize("internal_batch_size", [None, 1, 2, 4, 7, 100])
def test_plan_covers_every_row_once_within_the_bound(
    batch: int, n_steps: int, internal_batch_size: int | None
) -> None:
    plan = plan_path(batch, n_steps, internal_batch_size)
    examples = [i for rows in plan.example_groups for i in range(batch)[rows]]
    assert examples == list(range(batch))
    steps = [s for chunk in plan.step_chunks for s in chunk]
    assert steps == list(range(n_steps, -1, -1))
    if internal_batch_size is not None:
        largest_group = max(rows.stop - rows.start for rows in plan.example_groups)
        assert all(len(chunk) * largest_group <= internal_batch_size for chunk in plan.step_chunks)
    else:
        assert len(plan.example_groups) == 1 and len(plan.step_chunks) == 1


@pytest.mark.parametrize("bad", [0, -3])
def test_plan_rejects_non_positive_batch_sizes(bad: int) -> None:
    with pytest.raises(ValueError, match="internal_batch_size"):
        plan_path(2, 3, bad)
    with pytest.raises(TypeError, match="internal_batch_size"):
        plan_path(2, 3, 2.0)  # type: ignore[arg-type]


def test_path_points_are_step_major_and_exact_at_the_ends() -> None:
    x = torch.rand(2, 3) * 7
    base = torch.rand(1, 3)
    (rows,) = path_points((x,), (base,), [3, 2, 0], n_steps=3)
    assert rows.shape == (6, 3)
    assert torch.equal(rows[:2], x)
    assert torch.equal(rows[4:], base.expand(2, 3))
    torch.testing.assert_close(rows[2:4], base + (2 / 3) * (x - base))


def test_take_examples_and_expansion_keep_examples_aligned() -> None:
    target = torch.tensor([4, 5, 6])
    scale = torch.tensor([1.0, 2.0, 3.0])
    group_target, (group_scale, flag) = take_examples(target, (scale, "f"), slice(1, 3), 3)
    rows_target, (rows_scale, flag) = expand_for_steps(group_target, (group_scale, flag), 2)
    assert rows_target.tolist() == [5, 6, 5, 6]
    assert rows_scale.tolist() == [2.0, 3.0, 2.0, 3.0]
    assert flag == "f"
    with pytest.raises(ValueError, match="one entry per example"):
        take_examples([1, 2], None, slice(0, 1), 3)
    with pytest.raises(ValueError, match="one entry per example"):
        take_examples(torch.tensor([1, 2]), None, slice(0, 1), 3)


def test_layer_tap_gives_the_gradient_after_the_layer_only() -> None:
    first, second = nn.Linear(3, 4), nn.Linear(4, 2)
    model = nn.Sequential(first, nn.Tanh(), second)
    x = torch.rand(5, 3)
    bag = HookBag()
    tap = LayerTap(first, bag)
    out, activation = tap.run(model, (x,), None)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), activation)
    bag.remove_all()
    assert_no_hooks(model)
    reference = first(x).detach().requires_grad_()
    (expected,) = torch.autograd.grad(second(torch.tanh(reference))[:, 1].sum(), reference)
    torch.testing.assert_close(activation, reference.detach())
    torch.testing.assert_close(grad, expected)
    assert first.weight.grad is None  # nothing before the layer took part in the backward pass


def test_layer_tap_allows_in_place_ops_after_the_layer() -> None:
    conv = nn.Conv2d(1, 2, 1)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten())
    bag = HookBag()
    out, activation = LayerTap(conv, bag).run(model, (torch.randn(2, 1, 3, 3),), None)
    bag.remove_all()
    (grad,) = torch.autograd.grad(out.sum(), activation)
    assert torch.equal(grad, (activation > 0).to(grad.dtype))


def test_layer_tap_on_the_graph_serves_the_inputs_and_the_layer() -> None:
    first, second = nn.Linear(3, 4), nn.Linear(4, 2)
    model = nn.Sequential(first, nn.ReLU(inplace=True), second)
    leaf = torch.randn(5, 3).requires_grad_()
    bag = HookBag()
    tap = LayerTap(first, bag, stop_at_layer=False)
    with tap.tapping():
        out = model(leaf)
    model(leaf)  # outside the block the hook leaves the layer alone
    bag.remove_all()
    assert_no_hooks(model)
    activation = tap.activation()
    pre = (leaf @ first.weight.T + first.bias).detach()
    torch.testing.assert_close(activation.detach(), pre)  # the in-place ReLU did not touch it
    (to_input,) = torch.autograd.grad(out[:, 1].sum(), leaf, retain_graph=True)
    to_layer = tap.gradient(out[:, 1])
    expected_layer = second.weight[1].detach() * (pre > 0)
    torch.testing.assert_close(to_layer, expected_layer)
    torch.testing.assert_close(to_input, expected_layer @ first.weight.detach())


def test_layer_tap_names_a_layer_that_did_not_run_or_does_not_reach_the_score() -> None:
    used, unused = nn.Linear(3, 2), nn.Linear(2, 2)
    bag = HookBag()
    tap = LayerTap(unused, bag)
    with pytest.raises(ValueError, match=r"did not run.*never ran"):
        tap.run(used, (torch.rand(2, 3),), None)
    tap = LayerTap(used, bag)
    out, _ = tap.run(used, (torch.rand(2, 3),), None)
    with pytest.raises(ValueError, match="does not depend on the layer"):
        tap.gradient(out.detach()[:, 0])
    bag.remove_all()
    assert_no_hooks(used)
