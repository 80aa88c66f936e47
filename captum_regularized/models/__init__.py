"""Small reference models and a plain training helper."""

from captum_regularized.models.simple_cnn import SimpleCNN
from captum_regularized.models.training import evaluate_accuracy, train_classifier

__all__ = ["SimpleCNN", "evaluate_accuracy", "train_classifier"]
