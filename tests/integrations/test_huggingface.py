"""A Hugging Face ``ViTForImageClassification`` (tiny, random, built offline from a
``ViTConfig``) returns an ``ImageClassifierOutput``: every method, metric and training
loss takes it and gives what it gives on ``lambda x: model(x).logits``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized import attr, metrics, models, regularizers
from tests.model_checks import untouched

transformers = pytest.importorskip("transformers")

CLASSES = [2, 0, 1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=8, num_labels=3,
    )
    return transformers.ViTForImageClassification(config).eval()


def _last_layer(model: nn.Module) -> nn.Module:
    """The last encoder layer (``vit.layers`` in transformers 5, ``vit.encoder.layer`` before)."""
    layers = getattr(model.vit, "layers", None)
    return (layers if layers is not None else model.vit.encoder.layer)[-1]


class _Logits(nn.Module):
    """The tensor-returning equivalent as a module (the losses take modules)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


MODEL = _model()
X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(x: torch.Tensor) -> torch.Tensor:
    return MODEL(x).logits


def _same(got: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])
    else:
        torch.testing.assert_close(got, expected)


def test_the_model_returns_a_model_output():
    out = MODEL(X)
    assert not isinstance(out, torch.Tensor) and out.logits.shape == (3, 3)


LAYER = _last_layer(MODEL).layernorm_before
METHODS = {
    "LayerRSIGradCam": lambda f, t: attr.LayerRSIGradCam(f, LAYER).attribute(
        X, target=t, n_steps=4, reshape_transform=attr.vit_tokens_to_map
    ),
    "GuidedGradCam": lambda f, t: attr.GuidedGradCam(f, LAYER).attribute(
        X, target=t, reshape_transform=attr.vit_tokens_to_map
    ),
    "signed_saliency_maps": lambda f, t: attr.signed_saliency_maps(f, X, target=t),
    "GuidedBackprop": lambda f, t: attr.GuidedBackprop(f).attribute(X, target=t),
    "gradient_alignment": lambda f, t: metrics.gradient_alignment(f, X, target=t),
    "deletion_curve": lambda f, t: metrics.deletion_curve(
        f, X, torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2)), t, steps=4
    ).scores,
}


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_and_metrics_match_the_logits_function(name: str):
    run = METHODS[name]
    expected = run(_logits, CLASSES)
    with untouched(MODEL, X):
        got = run(MODEL, CLASSES)
    _same(got, expected)


def test_layer_maps_are_not_trivial():
    cam = METHODS["LayerRSIGradCam"](MODEL, CLASSES)
    assert cam.shape == (3, 1, 4, 4) and cam.abs().sum() > 0


class _GradCamTarget:
    """Behaves like pytorch-grad-cam's ``ClassifierOutputTarget``."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[self.category] if output.dim() == 1 else output[:, self.category]


def test_grad_cam_style_targets_on_the_model_output():
    targets = [_GradCamTarget(c) for c in CLASSES]
    for name in ("LayerRSIGradCam", "GuidedGradCam", "signed_saliency_maps"):
        _same(METHODS[name](MODEL, targets), METHODS[name](_logits, CLASSES))


def test_evaluate_accuracy_and_dataset():
    labels = torch.tensor(CLASSES)
    data = TensorDataset(X, labels)
    expected = float((_logits(X).argmax(1) == labels).float().mean())
    assert models.evaluate_accuracy(MODEL, data, batch_size=2) == pytest.approx(expected)


LOSSES = {
    "GuidedGradientRegularizer": lambda m: regularizers.GuidedGradientRegularizer(m, weight=1.0),
    "GradientNormPenalty": lambda m: regularizers.GradientNormPenalty(m, norm="l1", epsilon=0.1),
    "NormRegularizedAdversarialLoss": lambda m: regularizers.NormRegularizedAdversarialLoss(
        m, norm="l1", epsilon=0.05, steps=2
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_training_step_matches_the_logits_module(name: str):
    """Same loss values and the same weight gradients as on the logits module."""
    labels = torch.tensor(CLASSES)
    results = []
    for module in (MODEL, _Logits(MODEL)):
        MODEL.zero_grad(set_to_none=True)
        out = LOSSES[name](module)(X, labels)
        logits, _ = out  # a RegularizerOutput: logits must be the tensor
        assert isinstance(logits, torch.Tensor) and logits.shape == (3, 3)
        loss = out.loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in MODEL.parameters()]))
    MODEL.zero_grad(set_to_none=True)
    (loss, grads), (expected_loss, expected_grads) = results
    torch.testing.assert_close(loss, expected_loss)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


UNSUPPORTED = {
    "tuple": (lambda x: MODEL(x, return_dict=False), r"tuple; wrap the model.*model\(x\)\[0\]"),
    "missing key": (lambda x: {"scores": MODEL(x).logits}, r"dict with keys \['scores'\]"),
    "string": (lambda x: "logits", "got a str"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_outputs_are_a_type_error(case: str):
    forward, match = UNSUPPORTED[case]
    with untouched(MODEL, X), pytest.raises(TypeError, match=match):
        attr.PositiveSaliency(forward).attribute(X, target=0)
    with pytest.raises(TypeError, match=match):
        metrics.deletion_auc(forward, X, torch.rand(3, 1, 32, 32), target=0, steps=2)


def test_train_classifier_and_the_quantus_adapter_take_the_model():
    from captum.attr import Saliency

    from captum_regularized.integrations.quantus import explain_func

    model = _model()
    data = TensorDataset(X, torch.tensor(CLASSES))
    history = models.train_classifier(model, data, epochs=1, batch_size=3, progress=False)
    assert len(history) == 1 and 0.0 <= history[0]["accuracy"] <= 1.0
    model.eval()
    leaf = X.clone().requires_grad_()
    expected = Saliency(lambda x: model(x).logits).attribute(leaf, target=torch.tensor(CLASSES))
    got = explain_func(model, X.numpy(), CLASSES, method="Saliency")  # Captum's own class
    torch.testing.assert_close(torch.from_numpy(got), expected)
