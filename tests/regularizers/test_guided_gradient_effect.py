"""The effect the regularizer is for: plain gradients that look like guided backprop.

On ``SimpleCNN`` (ReLU) the regularised model's held-out plain gradients align with its
guided ones at the same accuracy. Beyond ReLU: ``SimpleCNN`` with every ``nn.ReLU``
replaced by ``nn.SiLU``, trained briefly on the synthetic shapes with the guided-gradient
regularizer (exact and finite-difference modes), has a held-out guided/plain cosine
(``metrics.gradient_alignment``) clearly above that of the same network trained without
it from the same seed. Measured on seeds 0, 1 and 2 with these settings the SiLU margin
was 0.26-0.50 in both modes (seed 0: about 0.44 and 0.42); the test asks for 0.15.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized._internal.guided_relu import guided_and_plain_gradients
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import gradient_alignment
from captum_regularized.models import (
    SimpleCNN,
    evaluate_accuracy,
    train_classifier,
    with_cross_entropy,
)
from captum_regularized.regularizers import GuidedGradientRegularizer

NUM_CLASSES = 3
# A short run needs more than the paper's 7.5e-3 (200 epochs on CIFAR-100).
WEIGHT = 0.2
SILU_WEIGHT = 0.3
SILU_SEED = 0


def _shapes(num_samples: int, seed: int) -> TensorDataset:
    data = SyntheticShapes(
        num_samples, image_size=32, num_classes=NUM_CLASSES, num_distractors=0, seed=seed
    )
    images, labels, _ = data.render(list(range(num_samples)))
    return TensorDataset(images, labels)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small convolutions: one thread is faster than two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _held_out_cosine(model: torch.nn.Module, data: TensorDataset) -> float:
    model.eval()
    images, labels = data.tensors
    _, plain, guided = guided_and_plain_gradients(model, images, labels)
    model.train()
    return float(F.cosine_similarity(plain.flatten(1), guided.flatten(1)).mean())


def _train(regularized: bool, train_set: TensorDataset) -> SimpleCNN:
    torch.manual_seed(0)
    model = SimpleCNN(NUM_CLASSES, width=8)
    regularizer = GuidedGradientRegularizer(model, weight=WEIGHT)
    loss = with_cross_entropy(regularizer) if regularized else None
    train_classifier(model, train_set, epochs=8, batch_size=16, lr=1e-2, progress=False, loss=loss)
    return model


@pytest.mark.slow
def test_regularised_training_aligns_held_out_gradients_at_the_same_accuracy():
    with _one_thread():
        train_set, held_out = _shapes(384, seed=0), _shapes(128, seed=1)
        plain = _train(False, train_set)
        regularized = _train(True, train_set)
        plain_cos = _held_out_cosine(plain, held_out)
        reg_cos = _held_out_cosine(regularized, held_out)
        plain_acc = evaluate_accuracy(plain, held_out)
        reg_acc = evaluate_accuracy(regularized, held_out)
    assert plain_acc >= 0.9, "the unregularised baseline did not learn the task"
    assert reg_cos > plain_cos + 0.15, (plain_cos, reg_cos)
    assert reg_acc >= plain_acc - 0.02, (plain_acc, reg_acc)


# ------------------------------------------------------------------ beyond ReLU


def _silu_cnn() -> nn.Module:
    torch.manual_seed(SILU_SEED)
    model = SimpleCNN(NUM_CLASSES, width=8)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    return model


def _silu_held_out_cosine(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    images, labels = data.tensors
    cosine = float(gradient_alignment(model, images, target=labels).mean())
    model.train()
    return cosine


def _train_silu(mode: str | None, train_set: TensorDataset) -> nn.Module:
    model = _silu_cnn()
    loss = (
        None
        if mode is None
        else with_cross_entropy(GuidedGradientRegularizer(model, weight=SILU_WEIGHT, mode=mode))
    )
    train_classifier(
        model, train_set, epochs=5, batch_size=16, lr=1e-2, progress=False, loss=loss,
        seed=SILU_SEED,
    )
    return model


@pytest.mark.slow
def test_regularised_training_aligns_a_silu_networks_held_out_gradients():
    with _one_thread():
        train_set = _shapes(256, seed=SILU_SEED)
        held_out = _shapes(128, seed=SILU_SEED + 1)
        plain = _train_silu(None, train_set)
        plain_cos = _silu_held_out_cosine(plain, held_out)
        plain_acc = evaluate_accuracy(plain, held_out)
        regularized = {
            mode: _silu_held_out_cosine(_train_silu(mode, train_set), held_out)
            for mode in ("double_backprop", "finite_difference")
        }
    assert plain_acc >= 0.9, "the unregularised baseline did not learn the task"
    for mode, cosine in regularized.items():
        assert cosine > plain_cos + 0.15, (mode, plain_cos, cosine)
