"""train_classifier learns SyntheticShapes (the demo's recipe, scaled down)."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.models import SimpleCNN, evaluate_accuracy, train_classifier


@pytest.mark.slow
def test_simple_cnn_learns_synthetic_shapes() -> None:
    train = SyntheticShapes(3000, image_size=32, num_distractors=2, noise=0.06, seed=0)
    held_out = SyntheticShapes(500, image_size=32, num_distractors=2, noise=0.06, seed=1)
    torch.manual_seed(0)
    model = SimpleCNN(train.num_classes, width=8)
    history = train_classifier(
        model, train.materialize(), epochs=6, batch_size=64, lr=3e-3, progress=False
    )
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate_accuracy(model, held_out.materialize()) >= 0.90
