"""The authors' AdvGrad inner loop as options of NormRegularizedAdversarialLoss.

``start="zero"``, ``update_batchnorm=True`` and ``step_size`` against a loop written
here in plain torch (the ``l1`` sign step and box projection included), on a tiny
train-mode model with BatchNorm; and BatchNorm statistics of the outer pass with
``clean_weight > 0``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized.regularizers import NormRegularizedAdversarialLoss
from tests.model_checks import untouched

EPS = 0.1


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ).double().train()


def _batch(n: int = 6):
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(n, 3, 2, 2, generator=gen, dtype=torch.float64)
    return images, torch.randint(0, 3, (n,), generator=gen)


def _loss_and_gradient(model, x, labels):
    leaf = x.clone().requires_grad_(True)
    losses = F.cross_entropy(model(leaf), labels, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), leaf)
    return losses.detach(), g


def _reference_loop(model, x, labels, steps, step, start, keep_best=False):
    """The l1 inner loop: sign steps of ``step``, clamp to the box; every pass trains BN.

    ``start="zero"``: ``steps`` steps from ``delta = 0``; ``"closed_form"``: ``eps sign(g)``
    from the pass at ``x``, then ``steps - 1`` steps. ``keep_best``: each example's
    iterate of highest loss (first maximum), the last one scored by a no-grad pass.
    """
    if start == "zero":
        delta, count = torch.zeros_like(x), steps
    else:
        _, g = _loss_and_gradient(model, x, labels)
        delta, count = (EPS * g.sign()).clamp(-EPS, EPS), steps - 1
    iterates, values = [], []
    for _ in range(count):
        losses, g = _loss_and_gradient(model, x + delta, labels)
        iterates.append(delta)
        values.append(losses)
        delta = (delta + step * g.sign()).clamp(-EPS, EPS)
    if not keep_best:
        return delta
    with torch.no_grad():
        values.append(F.cross_entropy(model(x + delta), labels, reduction="none"))
    iterates.append(delta)
    best = delta.clone()
    for i in range(x.shape[0]):
        scores = [float(v[i]) for v in values]
        best[i] = iterates[scores.index(max(scores))][i]
    return best


def _assert_same_buffers(model, reference):
    for (name, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12, msg=f"buffer {name}")


@pytest.mark.parametrize("start", ["zero", "closed_form"])
@pytest.mark.parametrize("update_batchnorm", [True, False])
def test_inner_loop_matches_the_plain_loop_and_moves_batchnorm_as_told(start, update_batchnorm):
    model = _model()
    initial = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(
        model, epsilon=EPS, steps=4, step_size=0.3 * EPS, start=start,
        update_batchnorm=update_batchnorm, select_iterate="last",
    )
    delta = adv.perturb(images, labels)
    expected = _reference_loop(reference, images, labels, 4, 0.3 * EPS, start)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-12)
    assert float(delta.abs().max()) <= EPS + 1e-12
    # The reference's BatchNorm took one update per inner pass (4 of them).
    assert int(reference[2].num_batches_tracked) == 4
    _assert_same_buffers(model, reference if update_batchnorm else initial)
    assert model.training and model[2].track_running_stats


def test_zero_start_takes_steps_ascent_steps_with_the_default_step():
    """Default ``2.5 * eps / steps``; from 0 the first step is ``step * sign(g(x))``."""
    model = _model()
    reference = copy.deepcopy(model)
    images, labels = _batch()
    one = NormRegularizedAdversarialLoss(model, epsilon=EPS, steps=1, step_size=0.02,
                                         start="zero").perturb(images, labels)
    _, g = _loss_and_gradient(reference, images, labels)
    torch.testing.assert_close(one, 0.02 * g.sign(), rtol=0, atol=1e-12)
    delta = NormRegularizedAdversarialLoss(model, epsilon=EPS, steps=3, start="zero",
                                           update_batchnorm=True).perturb(images, labels)
    expected = _reference_loop(reference, images, labels, 3, 2.5 * EPS / 3, "zero")
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-12)


def test_zero_start_best_iterate_and_its_scoring_pass_update_batchnorm():
    model = _model()
    reference = copy.deepcopy(model)
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(model, epsilon=EPS, steps=3, step_size=0.3 * EPS,
                                         start="zero", update_batchnorm=True,
                                         select_iterate="best")
    delta = adv.perturb(images, labels)
    expected = _reference_loop(reference, images, labels, 3, 0.3 * EPS, "zero", keep_best=True)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-12)
    assert int(model[2].num_batches_tracked) == 4  # 3 passes + the scoring pass
    _assert_same_buffers(model, reference)


def test_training_loss_of_the_authors_loop():
    """The loss is the plain loss at ``x + delta``; BatchNorm: inner passes, then the outer."""
    model = _model()
    reference = copy.deepcopy(model)
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(model, epsilon=EPS, steps=2, step_size=0.3 * EPS,
                                         start="zero", update_batchnorm=True)
    loss = adv(images, labels).loss
    delta = _reference_loop(reference, images, labels, 2, 0.3 * EPS, "zero")
    expected = F.cross_entropy(reference(images + delta), labels)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    _assert_same_buffers(model, reference)


def test_clean_weight_moves_batchnorm_twice_like_two_plain_forwards():
    """``clean_weight > 0``: one forward on ``x + delta``, then one on ``x``, each updating BN."""
    model = _model()
    reference = copy.deepcopy(model)
    images, labels = _batch()
    settings = {"epsilon": EPS, "steps": 2, "clean_weight": 0.25}
    delta = NormRegularizedAdversarialLoss(reference, **settings).perturb(images, labels)
    loss = NormRegularizedAdversarialLoss(model, **settings)(images, labels).loss
    adversarial = F.cross_entropy(reference(images + delta), labels)
    clean = F.cross_entropy(reference(images), labels)
    torch.testing.assert_close(loss, 0.75 * adversarial + 0.25 * clean, rtol=0, atol=1e-12)
    _assert_same_buffers(model, reference)
    assert int(model[2].num_batches_tracked) == 2


class _FailsOnCall(nn.Module):
    def __init__(self, model: nn.Module, fail_on: int) -> None:
        super().__init__()
        self.model, self.fail_on, self.calls = model, fail_on, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyError("injected")
        return self.model(x)


def test_updated_batchnorm_statistics_are_restored_when_the_loop_raises():
    model = _FailsOnCall(_model(), fail_on=3)
    images, labels = _batch()
    adv = NormRegularizedAdversarialLoss(model, epsilon=EPS, steps=4, start="zero",
                                         update_batchnorm=True)
    with untouched(model, images, labels), pytest.raises(KeyError, match="injected"):
        adv(images, labels)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"start": "middle"}, ValueError, "start must be one of"),
        ({"start": None}, ValueError, "start must be one of"),
        ({"norm": "gaze", "start": "zero"}, ValueError, "start='zero'"),
        ({"update_batchnorm": "yes"}, TypeError, "update_batchnorm must be a bool"),
        ({"update_batchnorm": 1}, TypeError, "update_batchnorm must be a bool"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        NormRegularizedAdversarialLoss(_model(), **kwargs)


def test_options_are_kept():
    adv = NormRegularizedAdversarialLoss(_model(), steps=3, start="zero", update_batchnorm=True)
    assert (adv.start, adv.update_batchnorm) == ("zero", True)
    default = NormRegularizedAdversarialLoss(_model())
    assert (default.start, default.update_batchnorm) == ("closed_form", False)
