"""Building a metric object checks its settings with the wrapped function's own checks and
never runs the model (issue 28, item 5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics")

from captum_regularized import metrics
from captum_regularized.metrics import torchmetrics as tm


class Exploding(nn.Module):
    """A network with a ReLU (for the guided rule) whose forward pass must not happen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.relu = nn.ReLU()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        raise AssertionError("the model ran")


MODEL_METRICS: dict[str, Callable[[nn.Module], Any]] = {
    "DeletionAUC": lambda f: tm.DeletionAUC(f, steps=3, substrate="blur"),
    "InsertionAUC": lambda f: tm.InsertionAUC(f, substrate=torch.zeros(3, 1, 1)),
    "AverageDrop": lambda f: tm.AverageDrop(f, internal_batch_size=2),
    "AverageGain": lambda f: tm.AverageGain(f, channel_reduction="sum"),
    "IncreaseInConfidence": lambda f: tm.IncreaseInConfidence(f),
    "AllegianceDeletionAUC": lambda f: tm.AllegianceDeletionAUC(f, fill="white"),
    "ROADCombined": lambda f: tm.ROADCombined(f, percentiles=(20, 80)),
    "GradientAlignment": lambda f: tm.GradientAlignment(f, rule="ungated"),
}


@pytest.mark.parametrize("name", list(MODEL_METRICS))
def test_construction_never_runs_the_model(name: str, recwarn: pytest.WarningsRecorder):
    model = Exploding()
    metric = MODEL_METRICS[name](model)
    assert model.calls == 0
    assert metric.forward_func is model
    assert not [w for w in recwarn if "every map of the batch is zero" in str(w.message)]


x, m = torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8)
# name -> (build the metric with a bad setting, call the function with it)
BAD_SETTINGS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "steps": (lambda f: tm.DeletionAUC(f, steps=0),
              lambda f: metrics.deletion_auc(f, x, m, steps=0)),
    "substrate type": (lambda f: tm.DeletionAUC(f, substrate=[0.5]),
                       lambda f: metrics.deletion_auc(f, x, m, substrate=[0.5])),
    "blur_kernel_size": (lambda f: tm.InsertionAUC(f, blur_kernel_size=4),
                         lambda f: metrics.insertion_auc(f, x, m, blur_kernel_size=4)),
    "internal_batch_size type": (
        lambda f: tm.IncreaseInConfidence(f, internal_batch_size=2.0),
        lambda f: metrics.increase_in_confidence(f, x, m, internal_batch_size=2.0),
    ),
    "fractions range": (lambda f: tm.AllegianceDeletionAUC(f, fractions=[0.0, 1.5]),
                        lambda f: metrics.allegiance_deletion_auc(f, x, m, fractions=[0.0, 1.5])),
    "fill type": (lambda f: tm.AllegianceDeletionAUC(f, fill=True),
                  lambda f: metrics.allegiance_deletion_auc(f, x, m, fill=True)),
    "percentiles": (lambda f: tm.ROADCombined(f, percentiles=(0, 50)),
                    lambda f: metrics.road(f, x, m, percentiles=(0, 50))),
    "noise": (lambda f: tm.ROADCombined(f, noise=-1.0),
              lambda f: metrics.road(f, x, m, noise=-1.0)),
    "road channel_reduction": (lambda f: tm.ROADCombined(f, channel_reduction="l2"),
                               lambda f: metrics.road(f, x, m, channel_reduction="l2")),
    "pointing channel_reduction": (
        lambda f: tm.PointingGame(channel_reduction="min"),
        lambda f: metrics.pointing_game(m, m > 0.5, channel_reduction="min"),
    ),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_the_functions_error_without_running_the_model(name: str):
    build, call = BAD_SETTINGS[name]
    model = Exploding()
    with pytest.raises((TypeError, ValueError)) as expected:
        call(model)  # the function checks its settings before its model runs, too
    with pytest.raises(expected.type) as caught:
        build(model)
    assert str(caught.value) == str(expected.value)
    assert model.calls == 0
