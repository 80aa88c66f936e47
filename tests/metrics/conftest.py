"""A small model shared by the metric tests."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.models import SimpleCNN


@pytest.fixture
def cnn() -> SimpleCNN:
    """A tiny BatchNorm CNN, left in *train* mode so tests see the metric restore it."""
    torch.manual_seed(0)
    return SimpleCNN(num_classes=4, width=4)
