"""Small reference models and a plain training helper."""

from captum_regularized.models.simple_cnn import SimpleCNN
from captum_regularized.models.training import (
    LossHook,
    PenaltyHook,
    evaluate_accuracy,
    evaluate_correct,
    train_classifier,
    with_cross_entropy,
)

__all__ = [
    "LossHook",
    "PenaltyHook",
    "SimpleCNN",
    "evaluate_accuracy",
    "evaluate_correct",
    "train_classifier",
    "with_cross_entropy",
]
