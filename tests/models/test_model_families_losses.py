"""Every training loss on the torchvision families users have (random weights, 32x32).

For each family of :mod:`tests.models.test_model_families` (ResNet-18, MobileNet V2 /
V3-small, EfficientNet-B0, ConvNeXt-tiny, RegNetY-400MF and a small VisionTransformer,
with the same adjustments for random weights), one training step on a batch of two
with each loss of :mod:`captum_regularized.regularizers` (the guided-gradient
regularizer and the l1 gradient-norm penalty in both modes, the l1 norm-regularized
adversarial loss with one step) gives a finite loss and finite parameter gradients,
and the loss call leaves the model's hooks, modes and flags as found. MobileNet V3
cannot be differentiated twice (no double backward for ``hardsigmoid``): there the exact
mode must refuse with an error naming ``mode='finite_difference'``, which is then run
instead. Each model is
built once per module; a case takes about a second on a CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized import regularizers
from tests.model_checks import untouched
from tests.models.test_model_families import FAMILIES, NUM_CLASSES, _calibrate_batchnorm

LABELS = torch.tensor([1, 7])
EPSILON = 0.01

MODES = ("double_backprop", "finite_difference")

NO_DOUBLE_BACKWARD = {"mobilenet_v3_small"}
"""Families the exact mode cannot run on: PyTorch has no double backward for
``hardsigmoid`` (MobileNet V3's squeeze-excitation gates); the loss must say so and name
``mode='finite_difference'``, which then trains."""

LOSSES = {
    **{
        f"guided-{mode}": (
            lambda model, mode=mode: regularizers.GuidedGradientRegularizer(
                model, weight=0.1, mode=mode
            )
        )
        for mode in MODES
    },
    **{
        f"gradient_norm-{mode}": (
            lambda model, mode=mode: regularizers.GradientNormPenalty(
                model, norm="l1", epsilon=EPSILON, mode=mode
            )
        )
        for mode in MODES
    },
    "norm_adversarial": lambda model: regularizers.NormRegularizedAdversarialLoss(
        model, norm="l1", epsilon=EPSILON, steps=1
    ),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    built = FAMILIES[request.param].build()
    _calibrate_batchnorm(built)  # leaves it in eval mode
    return request.param, built


def _inputs() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _step(model: nn.Module, loss_name: str, x: torch.Tensor) -> torch.Tensor:
    """One training step's loss (backward taken): the loss call checked with ``untouched``."""
    model.zero_grad(set_to_none=True)
    loss_fn = LOSSES[loss_name](model)
    with untouched(model, x, values=False, buffers=False):
        out = loss_fn(x, LABELS)
    logits, penalty = out  # every loss returns a RegularizerOutput
    assert logits.shape == (2, NUM_CLASSES)
    assert penalty.dim() == 0 and torch.isfinite(penalty)
    loss = out.loss
    torch.testing.assert_close(loss, F.cross_entropy(logits, LABELS) + penalty)
    assert loss.dim() == 0
    loss.backward()
    return loss.detach()


def _assert_finite_gradients(model: nn.Module) -> None:
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None for g in grads.values()), "no parameter got a gradient"
    bad = [n for n, g in grads.items() if g is not None and not torch.isfinite(g).all()]
    assert not bad, f"non-finite parameter gradients: {bad[:5]}"
    assert sum(float(g.abs().sum()) for g in grads.values() if g is not None) > 0


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_one_training_step_is_finite_and_leaves_the_model_as_found(
    family: tuple[str, nn.Module], loss_name: str
):
    name, model = family
    x = _inputs()
    try:
        if name in NO_DOUBLE_BACKWARD and loss_name.endswith("double_backprop"):
            with untouched(model, x), pytest.raises(
                RuntimeError, match=r"cannot be differentiated twice.*mode='finite_difference'"
            ):
                LOSSES[loss_name](model)(x, LABELS)
            loss_name = loss_name.replace("double_backprop", "finite_difference")
        loss = _step(model, loss_name, x)
        assert torch.isfinite(loss), loss
        _assert_finite_gradients(model)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
