"""The progress bar of long calls: ``progress=True`` always, ``False`` never, ``None`` by rule.

The rule (``_internal.user_feedback.show_progress``): ``None`` shows the bar when the
call runs more than ``PROGRESS_THRESHOLD`` (64) model passes and stderr is a terminal.
Under pytest's capture stderr is not a terminal; the tests that need one patch the check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_regularized._internal import user_feedback
from captum_regularized._internal.user_feedback import PROGRESS_THRESHOLD, show_progress
from captum_regularized.attr import (
    ActiveSaliency,
    InactiveSaliency,
    LayerRSIGradCam,
    LayerScoreCam,
    signed_saliency_maps,
)


def classifier(num_classes: int) -> nn.Sequential:
    """A tiny eval-mode CNN whose first layer is a conv with 3 channels."""
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(12, num_classes),
    ).eval()


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make stderr count as a terminal for ``progress=None``."""
    monkeypatch.setattr(user_feedback, "_stderr_is_terminal", lambda: True)


def test_rule() -> None:
    assert show_progress(True, 0) and not show_progress(False, 10**6)
    # under pytest's capture stderr is not a terminal: no bar, however long the work
    assert not show_progress(None, 10**6)
    with pytest.raises(TypeError, match="progress"):
        show_progress("yes", 1)  # type: ignore[arg-type]


@pytest.mark.usefixtures("terminal")
def test_rule_on_a_terminal() -> None:
    assert show_progress(None, PROGRESS_THRESHOLD + 1)
    assert not show_progress(None, PROGRESS_THRESHOLD)


@pytest.mark.parametrize("method", [ActiveSaliency, InactiveSaliency])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_class_comparison_bar(
    method: type, strategy: str, capfd: pytest.CaptureFixture[str]
) -> None:
    model, x = classifier(10), torch.rand(2, 3, 6, 6)
    explainer = method(model)
    explainer.backward_strategy = strategy
    quiet = explainer.attribute(x, class_chunk_size=4, progress=False)
    assert capfd.readouterr().err == ""
    shown = explainer.attribute(x, class_chunk_size=4, progress=True)
    err = capfd.readouterr().err
    assert method.__name__ in err and "10/10" in err and "100%" in err
    assert torch.equal(quiet, shown)
    explainer.attribute(x)  # default, 10 classes: short work, and no terminal anyway
    assert capfd.readouterr().err == ""


def test_compare_classes_counts_only_the_compared(capfd: pytest.CaptureFixture[str]) -> None:
    ActiveSaliency(classifier(10)).attribute(
        torch.rand(1, 3, 6, 6), compare_classes=3, progress=True
    )
    assert "4/4" in capfd.readouterr().err  # the target and 3 other classes


def test_default_is_off_without_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(PROGRESS_THRESHOLD + 36), torch.rand(1, 3, 6, 6)
    ActiveSaliency(model).attribute(x)  # 100 backward passes
    signed_saliency_maps(model, x)
    assert capfd.readouterr().err == ""


@pytest.mark.usefixtures("terminal")
def test_default_on_a_terminal_follows_the_pass_count(capfd: pytest.CaptureFixture[str]) -> None:
    x = torch.rand(1, 3, 6, 6)
    ActiveSaliency(classifier(PROGRESS_THRESHOLD)).attribute(x)  # 64 passes: short
    assert capfd.readouterr().err == ""
    ActiveSaliency(classifier(PROGRESS_THRESHOLD + 1)).attribute(x)  # 65 passes
    assert f"{PROGRESS_THRESHOLD + 1}/{PROGRESS_THRESHOLD + 1}" in capfd.readouterr().err
    # top-k comparison of a 65-class model: 6 passes, no bar
    ActiveSaliency(classifier(PROGRESS_THRESHOLD + 1)).attribute(x, compare_classes=5)
    assert capfd.readouterr().err == ""


def test_signed_saliency_maps_bar(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(6), torch.rand(2, 3, 6, 6)
    quiet = signed_saliency_maps(model, x, progress=False)
    assert capfd.readouterr().err == ""
    shown = signed_saliency_maps(model, x, progress=True)
    err = capfd.readouterr().err
    assert "signed_saliency_maps" in err and "6/6" in err
    assert all(torch.equal(quiet[k], shown[k]) for k in quiet)


def test_rsi_grad_cam_bar(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(3), torch.rand(2, 3, 6, 6)
    cam = LayerRSIGradCam(model, model[0])
    kwargs = dict(target=1, n_steps=8, internal_batch_size=4)
    quiet = cam.attribute(x, progress=False, **kwargs)
    assert capfd.readouterr().err == ""
    shown = cam.attribute(x, progress=True, **kwargs)
    err = capfd.readouterr().err
    assert "LayerRSIGradCam" in err and "9/9" in err  # path points l = 8 .. 0
    assert torch.equal(quiet, shown)
    cam.attribute(x, **kwargs)  # 5 passes and no terminal: no bar
    assert capfd.readouterr().err == ""


def test_rsi_grad_cam_auto_bar_ends_complete(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(3), torch.rand(2, 3, 6, 6)
    cam = LayerRSIGradCam(model, model[0])
    quiet = cam.attribute(x, target=1, n_steps="auto", max_steps=16, progress=False)
    shown = cam.attribute(x, target=1, n_steps="auto", max_steps=16, progress=True)
    assert torch.equal(quiet, shown)
    points = int(cam.last_n_steps.max()) + 1  # levels nest: m + 1 points in all
    last = capfd.readouterr().err.split("\r")[-1]
    assert f"{points}/{points}" in last and "100%" in last


@pytest.mark.usefixtures("terminal")
def test_rsi_grad_cam_default_on_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(3), torch.rand(1, 3, 6, 6)
    cam = LayerRSIGradCam(model, model[0])
    cam.attribute(x, target=0, n_steps=8, internal_batch_size=1)  # 9 passes
    assert capfd.readouterr().err == ""
    cam.attribute(x, target=0, n_steps=PROGRESS_THRESHOLD, internal_batch_size=1)  # 65
    assert "LayerRSIGradCam" in capfd.readouterr().err


def test_score_cam_bar(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(3), torch.rand(2, 3, 6, 6)
    cam = LayerScoreCam(model, model[0])
    quiet = cam.attribute(x, target=1, internal_batch_size=4, progress=False)
    assert capfd.readouterr().err == ""
    shown = cam.attribute(x, target=1, internal_batch_size=4, progress=True)
    err = capfd.readouterr().err
    assert "LayerScoreCam" in err and "6/6" in err  # 2 examples x 3 channels
    assert torch.equal(quiet, shown)


@pytest.mark.usefixtures("terminal")
def test_score_cam_default_on_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    model, x = classifier(3), torch.rand(1, 3, 6, 6)
    cam = LayerScoreCam(model, model[0])
    cam.attribute(x, target=0, internal_batch_size=1)  # 3 masked passes
    assert capfd.readouterr().err == ""
    wide = nn.Sequential(
        nn.Conv2d(3, PROGRESS_THRESHOLD + 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(PROGRESS_THRESHOLD + 1, 2),
    ).eval()
    LayerScoreCam(wide, wide[0]).attribute(x, target=0, internal_batch_size=1)  # 65 passes
    assert "LayerScoreCam" in capfd.readouterr().err


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ActiveSaliency(m).attribute(x, progress=1),
        lambda m, x: signed_saliency_maps(m, x, progress="on"),
        lambda m, x: LayerRSIGradCam(m, m[0]).attribute(x, target=0, progress=1),
        lambda m, x: LayerScoreCam(m, m[0]).attribute(x, target=0, progress=1),
    ],
)
def test_progress_must_be_a_bool_or_none(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="progress must be None, True or False"):
        call(classifier(3), torch.rand(1, 3, 6, 6))
