"""Every attribution method warns when the model has train-mode BatchNorm or Dropout.

A train-mode BatchNorm normalises with the batch's statistics and Dropout drops units,
so the maps are not the eval-mode model's; the methods keep the model's mode (the
contract tests check that) but say so, naming ``.eval()``, at the user's line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import NoiseTunnel
from torch import nn

from captum_regularized._internal.user_feedback import train_mode_modules, warn_if_training
from captum_regularized.attr import (
    ActiveSaliency,
    GuidedBackprop,
    GuidedGradCam,
    InactiveSaliency,
    LayerGradCamPlusPlus,
    LayerRSIGradCam,
    LayerScoreCam,
    NegativeSaliency,
    PositiveSaliency,
    signed_saliency_maps,
)

EVAL = r"\.eval\(\)"


def small_net(kind: str) -> nn.Sequential:
    """Conv -> (BatchNorm | Dropout) -> ReLU -> pool -> linear, 3 classes, in train mode."""
    middle: nn.Module = nn.BatchNorm2d(4) if kind == "batchnorm" else nn.Dropout(0.3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), middle, nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).train()


METHODS: dict[str, Callable[[nn.Module, torch.Tensor], Any]] = {
    "PositiveSaliency": lambda m, x: PositiveSaliency(m).attribute(x, target=0),
    "NegativeSaliency": lambda m, x: NegativeSaliency(m).attribute(x, target=0),
    "ActiveSaliency": lambda m, x: ActiveSaliency(m).attribute(x, target=0),
    "InactiveSaliency": lambda m, x: InactiveSaliency(m).attribute(x, target=0),
    "signed_saliency_maps": lambda m, x: signed_saliency_maps(m, x, target=0),
    "LayerRSIGradCam": lambda m, x: LayerRSIGradCam(m, m[0]).attribute(x, target=0, n_steps=4),
    "GuidedBackprop": lambda m, x: GuidedBackprop(m).attribute(x, target=0),
    "GuidedGradCam": lambda m, x: GuidedGradCam(m, m[0]).attribute(x, target=0),
    "LayerGradCamPlusPlus": lambda m, x: LayerGradCamPlusPlus(m, m[0]).attribute(x, target=0),
    "LayerScoreCam": lambda m, x: LayerScoreCam(m, m[0]).attribute(x, target=0),
}


@pytest.mark.parametrize("kind", ["batchnorm", "dropout"])
@pytest.mark.parametrize("name", list(METHODS))
def test_train_mode_model_warns_at_the_callers_line(name: str, kind: str) -> None:
    model = small_net(kind)
    with pytest.warns(UserWarning, match=EVAL) as record:
        METHODS[name](model, torch.rand(2, 3, 6, 6))
    ours = [w for w in record if ".eval()" in str(w.message)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert message.startswith(name)
    assert ("BatchNorm2d" if kind == "batchnorm" else "Dropout") in message
    # the line in this file that called the method (the lambda in METHODS), not ours
    assert ours[0].filename == __file__
    assert model.training  # warned, not switched


@pytest.mark.parametrize("name", list(METHODS))
def test_eval_mode_model_gives_no_warning(name: str) -> None:
    model = small_net("batchnorm").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        METHODS[name](model, torch.rand(2, 3, 6, 6))


def test_default_filter_shows_it_once_per_call_site() -> None:
    model, x = small_net("batchnorm"), torch.rand(2, 3, 6, 6)
    method = PositiveSaliency(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            method.attribute(x, target=0)  # one call site, three calls
        method.attribute(x, target=0)  # another call site
    assert [w.lineno for w in caught] == sorted({w.lineno for w in caught})
    assert len(caught) == 2


def test_noise_tunnel_warning_points_at_the_users_line() -> None:
    model = small_net("dropout")
    with pytest.warns(UserWarning, match=EVAL) as record:
        NoiseTunnel(PositiveSaliency(model)).attribute(
            torch.rand(1, 3, 6, 6), target=0, nt_samples=2
        )
    assert {w.filename for w in record if ".eval()" in str(w.message)} == {__file__}


def test_modes_that_change_nothing_are_not_reported() -> None:
    untracked = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    no_drop = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0), nn.ReLU())
    assert train_mode_modules(untracked.train()) == []
    assert train_mode_modules(no_drop.train()) == []
    mixed = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    mixed[1].eval()  # only the Dropout is left in train mode
    assert train_mode_modules(mixed) == ["2: Dropout"]


def test_a_plain_function_is_not_inspected() -> None:
    model = small_net("batchnorm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_training(lambda x: model(x), "Demo")
        PositiveSaliency(lambda x: model(x)).attribute(torch.rand(2, 3, 6, 6), target=0)
    with pytest.warns(UserWarning, match=EVAL):  # a bound method leads to its module
        warn_if_training(model.forward, "Demo")


def test_many_modules_are_summarised() -> None:
    model = nn.Sequential(*[nn.Dropout(0.1) for _ in range(5)])
    with pytest.warns(UserWarning, match=r"0: Dropout, 1: Dropout, 2: Dropout and 2 more"):
        warn_if_training(model, "Demo")
