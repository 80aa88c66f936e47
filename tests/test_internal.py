"""The private shared mechanics: target selection, model-state guard, input checks."""

import contextlib

import pytest
import torch
from torch import nn

from captum_regularized._internal.batch_args import rows_of_args
from captum_regularized._internal.captum_compat import format_baselines, format_inputs
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.model_state import preserved_model
from captum_regularized._internal.targets import class_indices, target_gradients, target_scores
from tests.model_checks import assert_no_hooks, untouched


def test_class_indices_every_captum_form():
    out = torch.randn(3, 5)
    expected = [4, 0, 2]
    for form in (expected, torch.tensor(expected), [(4,), (0,), (2,)]):
        assert class_indices(out, form).tolist() == expected
    assert class_indices(out, 3).tolist() == [3, 3, 3]
    assert class_indices(out, (1,)).tolist() == [1, 1, 1]
    assert class_indices(out, torch.tensor(2)).tolist() == [2, 2, 2]
    assert class_indices(out, None).tolist() == out.argmax(1).tolist()


@pytest.mark.parametrize("bad", [5, -1, [0, 1, 7], torch.tensor([0, 9, 1])])
def test_class_indices_out_of_range_names_the_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        class_indices(torch.randn(3, 5), bad)


def test_class_indices_wrong_length_and_type():
    with pytest.raises(ValueError, match="one entry per example"):
        class_indices(torch.randn(3, 5), [1, 2])
    with pytest.raises(TypeError):
        class_indices(torch.randn(3, 5), torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="batch, classes"):
        class_indices(torch.randn(3), 0)


def test_target_scores_matches_a_loop():
    out = torch.randn(4, 6)
    target = [1, 5, 0, 3]
    expected = torch.stack([out[i, t] for i, t in enumerate(target)])
    assert torch.equal(target_scores(out, target), expected)
    assert torch.equal(target_scores(out[:, :1], None), out[:, 0])
    cube = torch.randn(2, 3, 4)
    assert torch.equal(target_scores(cube, (1, 2)), cube[:, 1, 2])
    assert torch.equal(
        target_scores(cube, [(0, 1), (2, 3)]), torch.stack([cube[0, 0, 1], cube[1, 2, 3]])
    )
    with pytest.raises(ValueError):
        target_scores(cube, 1)


def test_preserved_model_restores_after_an_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU()).train()
    model[0].weight.requires_grad_(False)
    with (
        untouched(model),
        pytest.raises(RuntimeError),
        preserved_model(model, eval_mode=True) as hooks,
    ):
        hooks.add(model[1].register_forward_hook(lambda *a: None))
        for p in model.parameters():
            p.requires_grad_(True)
        raise RuntimeError("boom")
    assert_no_hooks(model)


def test_input_checks():
    model = nn.Linear(3, 2)
    assert check_attribution_inputs((torch.zeros(2, 3),), model) == 2
    with pytest.raises(TypeError, match="floating"):
        check_attribution_inputs((torch.zeros(2, 3, dtype=torch.long),), model)
    with pytest.raises(ValueError, match="NaN"):
        check_attribution_inputs((torch.tensor([[float("nan"), 0.0, 0.0]]),), model)
    with pytest.raises(ValueError, match="batch size"):
        check_attribution_inputs((torch.zeros(2, 3), torch.zeros(3, 3)), model)
    with pytest.raises(TypeError):
        format_inputs([torch.zeros(1)])


def test_format_baselines_forms():
    x = (torch.ones(2, 3), torch.ones(2, 4))
    zeros = format_baselines(x, None)
    assert all(torch.equal(b, torch.zeros_like(b)) for b in zeros)
    assert torch.equal(format_baselines(x, (0.5, torch.zeros(1, 4)))[0], torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="baselines"):
        format_baselines(x, (torch.zeros(2, 5), 0.0))


def test_target_gradients_runs_the_given_forward_and_backward_rule():
    """The forward runs as given (autograd on), the backward context wraps the backward only."""
    model = nn.Linear(3, 2)
    x, unused = torch.rand(4, 3), torch.rand(4, 5)
    inside, seen = [False], []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, grad):
            seen.append(inside[0])
            return grad

    def forward(func, leaves, args):
        seen.append(("forward", torch.is_grad_enabled(), inside[0], args))
        return Spy.apply(func(leaves[0]))

    @contextlib.contextmanager
    def backward():
        inside[0] = True
        yield
        inside[0] = False

    target = [1, 0, 1, 0]
    with untouched(model, x, unused), torch.no_grad():
        g, g_unused = target_gradients(
            model, (x, unused), target, ("arg",), forward=forward, backward=backward
        )
    assert seen == [("forward", True, False, ("arg",)), True]
    torch.testing.assert_close(g, model.weight.detach()[target])
    assert torch.equal(g_unused, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="NaN"):
        target_gradients(model, (torch.full((1, 3), float("nan")),), 0)


def test_rows_of_args_indexes_the_per_example_tensors_only():
    per_example, shared, scalar = torch.arange(4.0), torch.ones(3), torch.tensor(2.0)
    rows = torch.tensor([3, 0])
    got = rows_of_args((per_example, shared, scalar, "mode"), rows, 4)
    assert got[0].tolist() == [3.0, 0.0]
    assert got[1] is shared and got[2] is scalar and got[3] == "mode"
    assert rows_of_args((per_example,), slice(1, 3), 4)[0].tolist() == [1.0, 2.0]
    assert rows_of_args(None, rows, 4) is None
