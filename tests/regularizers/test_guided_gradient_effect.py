"""The effect the regularizer is for: plain gradients that look like guided backprop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from captum_regularized._internal.guided_relu import guided_and_plain_gradients
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.models import (
    SimpleCNN,
    evaluate_accuracy,
    train_classifier,
    with_cross_entropy,
)
from captum_regularized.regularizers import GuidedGradientRegularizer

NUM_CLASSES = 3
WEIGHT = 0.2  # a short run needs more than the paper's 7.5e-3 (200 epochs on CIFAR-100)


def _shapes(num_samples: int, seed: int) -> TensorDataset:
    data = SyntheticShapes(
        num_samples, image_size=32, num_classes=NUM_CLASSES, num_distractors=0, seed=seed
    )
    images, labels, _ = data.render(list(range(num_samples)))
    return TensorDataset(images, labels)


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two busy ones
    try:
        train_set, held_out = _shapes(384, seed=0), _shapes(128, seed=1)
        plain = _train(False, train_set)
        regularized = _train(True, train_set)
        plain_cos = _held_out_cosine(plain, held_out)
        reg_cos = _held_out_cosine(regularized, held_out)
        plain_acc = evaluate_accuracy(plain, held_out)
        reg_acc = evaluate_accuracy(regularized, held_out)
    finally:
        torch.set_num_threads(threads)
    assert plain_acc >= 0.9, "the unregularised baseline did not learn the task"
    assert reg_cos > plain_cos + 0.15, (plain_cos, reg_cos)
    assert reg_acc >= plain_acc - 0.02, (plain_acc, reg_acc)
