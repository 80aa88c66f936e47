"""SimpleCNN and train_classifier: ReLU modules, the loss hook, and held-out accuracy."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.models import SimpleCNN, evaluate_accuracy, train_classifier


def test_simple_cnn_uses_distinct_relu_modules():
    model = SimpleCNN(num_classes=7, in_channels=1, width=4)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 4 and len({id(m) for m in relus}) == 4
    assert not any(m.inplace for m in relus)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 7)
    with pytest.raises(ValueError, match="num_classes"):
        SimpleCNN(num_classes=0)


def test_simple_cnn_and_training_reach_90_percent_held_out():
    torch.manual_seed(0)
    args = dict(image_size=32, num_classes=10, num_distractors=2)
    train = SyntheticShapes(2500, seed=0, **args).materialize()
    test_images, test_labels, _ = SyntheticShapes(400, seed=99, **args).tensors()
    model = SimpleCNN(10, width=8)
    history = train_classifier(model, train, epochs=4, batch_size=64, lr=1e-2, progress=False)
    accuracy = evaluate_accuracy(model, TensorDataset(test_images, test_labels))
    assert accuracy >= 0.90, accuracy
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.training  # left in train mode after training, as documented


def test_loss_hook_forms():
    data = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 2, (8,)))
    calls = []
    model = SimpleCNN(2, width=2)

    def pair_loss(x, y):
        calls.append(len(x))
        logits = model(x)
        return logits, logits.pow(2).mean() * 0.0

    history = train_classifier(model, data, epochs=1, batch_size=4, loss=pair_loss, progress=False)
    assert calls == [4, 4] and 0.0 <= history[0]["accuracy"] <= 1.0

    def scalar_loss(x, y):
        return F.cross_entropy(model(x), y)

    history = train_classifier(
        model, data, epochs=1, batch_size=4, loss=scalar_loss, progress=False
    )
    assert math.isnan(history[0]["accuracy"]) and history[0]["loss"] > 0


def test_bad_training_arguments():
    data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(SimpleCNN(2, width=2), data, epochs=0)
    with pytest.raises(TypeError, match="image, label"):
        train_classifier(SimpleCNN(2, width=2), torch.rand(4, 3, 8, 8), epochs=1, progress=False)
    empty = TensorDataset(torch.rand(0, 3, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(SimpleCNN(2, width=2), empty)
