"""The Quantus ``explain_func`` adapter, with and without Quantus installed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerGradCam, Saliency

from captum_regularized.attr import PositiveSaliency
from captum_regularized.integrations.quantus import explain_func, resolve_method
from captum_regularized.models import SimpleCNN
from tests.model_checks import untouched


@pytest.fixture
def model() -> SimpleCNN:
    torch.manual_seed(0)
    return SimpleCNN(num_classes=4, width=4).eval()


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((3, 3, 8, 8)).astype(np.float32), np.array([0, 3, 1])


def test_package_import_does_not_import_quantus():
    code = (
        "import sys, captum_regularized.integrations.quantus, captum_regularized.metrics; "
        "print('quantus' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("method", "reference"),
    [
        ("Saliency", lambda m, x, t: Saliency(m).attribute(x, target=t)),
        (PositiveSaliency, lambda m, x, t: PositiveSaliency(m).attribute(x, target=t)),
        ("PositiveSaliency", lambda m, x, t: PositiveSaliency(m).attribute(x, target=t)),
        ("NegativeSaliency", None),
        ("ActiveSaliency", None),
        ("InactiveSaliency", None),
    ],
)
def test_input_shaped_methods_return_numpy_of_the_input_shape(model, batch, method, reference):
    x, y = batch
    with untouched(model):
        out = explain_func(model, x, y, method=method)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    if reference is not None:
        expected = reference(model, torch.from_numpy(x).requires_grad_(), torch.from_numpy(y))
        np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_layer_methods_are_upsampled_and_kwargs_pass_through(model, batch):
    x, y = batch
    gradcam = explain_func(model, x, y, method="LayerGradCam", layer="block3")
    assert gradcam.shape == (3, 1, 8, 8)
    raw = LayerGradCam(model, model.block3).attribute(
        torch.from_numpy(x), target=torch.from_numpy(y)
    )
    expected = torch.nn.functional.interpolate(
        raw, size=(8, 8), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(gradcam, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    ours = explain_func(model, x, y, method="LayerRSIGradCam", layer=model.block3)
    assert ours.shape == (3, 1, 8, 8)
    ig = explain_func(model, x, y, method=IntegratedGradients, n_steps=4,
                      channel_reduction="max")
    assert ig.shape == (3, 1, 8, 8) and (ig >= 0).all()
    instance = Saliency(model)
    assert resolve_method(model, instance) is instance
    one_target = explain_func(model, x, 2, method="Saliency")
    np.testing.assert_allclose(one_target, explain_func(model, x, np.array([2, 2, 2])))


def test_bad_methods(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="'NoSuchMethod'"):
        explain_func(model, x, y, method="NoSuchMethod")
    with pytest.raises(ValueError, match="layer="):
        explain_func(model, x, y, method="LayerGradCam")
    with pytest.raises(TypeError, match="method"):
        explain_func(model, x, y, method=42)
    with pytest.raises(ValueError, match="targets"):
        explain_func(model, x, np.array([0, 1]))


def test_quantus_metrics_score_our_methods(model, batch):
    quantus = pytest.importorskip("quantus")
    x, y = batch
    for method in ("PositiveSaliency", "Saliency"):
        scores = quantus.Sparseness(disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, explain_func=explain_func,
            explain_func_kwargs={"method": method}, device="cpu",
        )
        assert len(scores) == 3 and np.isfinite(scores).all()
    masks = (np.random.default_rng(1).random((3, 1, 8, 8)) > 0.5).astype(np.float32)
    hits = quantus.PointingGame(disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, s_batch=masks, explain_func=explain_func,
        explain_func_kwargs={"method": "LayerGradCam", "layer": "block3"}, device="cpu",
    )
    assert set(np.asarray(hits, dtype=float).tolist()) <= {0.0, 1.0}
