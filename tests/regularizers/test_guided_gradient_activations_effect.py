"""The regularizer's effect beyond ReLU: a SiLU network's plain gradients come to look
like its guided ones.

``SimpleCNN`` with every ``nn.ReLU`` replaced by ``nn.SiLU``, trained briefly on the
synthetic shapes with the guided-gradient regularizer (exact and finite-difference
modes), has a held-out guided/plain cosine (``metrics.gradient_alignment``) clearly above
that of the same network trained without it from the same seed. Measured on seeds 0, 1
and 2 with these settings the margin was 0.26-0.50 in both modes (seed 0: about 0.44 and
0.42); the test asks for 0.15.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

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
WEIGHT = 0.3  # a short run needs more than the paper's 7.5e-3 (200 epochs on CIFAR-100)
SEED = 0


def _shapes(num_samples: int, seed: int) -> TensorDataset:
    data = SyntheticShapes(
        num_samples, image_size=32, num_classes=NUM_CLASSES, num_distractors=0, seed=seed
    )
    images, labels, _ = data.render(list(range(num_samples)))
    return TensorDataset(images, labels)


def _silu_cnn() -> nn.Module:
    torch.manual_seed(SEED)
    model = SimpleCNN(NUM_CLASSES, width=8)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    return model


def _held_out_cosine(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    images, labels = data.tensors
    cosine = float(gradient_alignment(model, images, target=labels).mean())
    model.train()
    return cosine


def _train(mode: str | None, train_set: TensorDataset) -> nn.Module:
    model = _silu_cnn()
    loss = (
        None
        if mode is None
        else with_cross_entropy(GuidedGradientRegularizer(model, weight=WEIGHT, mode=mode))
    )
    train_classifier(
        model, train_set, epochs=5, batch_size=16, lr=1e-2, progress=False, loss=loss, seed=SEED
    )
    return model


@pytest.mark.slow
def test_regularised_training_aligns_a_silu_networks_held_out_gradients():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two busy ones
    try:
        train_set, held_out = _shapes(256, seed=SEED), _shapes(128, seed=SEED + 1)
        plain = _train(None, train_set)
        plain_cos = _held_out_cosine(plain, held_out)
        plain_acc = evaluate_accuracy(plain, held_out)
        regularized = {
            mode: _held_out_cosine(_train(mode, train_set), held_out)
            for mode in ("double_backprop", "finite_difference")
        }
    finally:
        torch.set_num_threads(threads)
    assert plain_acc >= 0.9, "the unregularised baseline did not learn the task"
    for mode, cosine in regularized.items():
        assert cosine > plain_cos + 0.15, (mode, plain_cos, cosine)
