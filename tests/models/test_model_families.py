"""Every attribution class on the torchvision families users have (random weights, 32x32).

For ResNet-18, MobileNet V2 / V3-small, EfficientNet-B0, ConvNeXt-tiny, RegNetY-400MF
and a small VisionTransformer, every attribution class of :mod:`captum_regularized.attr`
runs, returns maps of the documented shape and leaves the model as found (eval and
train mode), and the guided rule finds each family's activations (ReLU, ReLU6,
Hardswish, SiLU, GELU), and nothing else, and changes the gradient. Captum's
``GuidedBackprop`` agrees on the ``nn.ReLU`` families and misses the others.

Random weights need two adjustments to behave like a trained network's: BatchNorm
running statistics are set from one batch (with torchvision's initialisation and unit
running variances, the gradients of the deeper families shrink to ~1e-12), and
ConvNeXt's layer scales start at 1 instead of 1e-6 (else every block is nearly the
identity and no activation matters). Each model is built once per module (a
module-scoped fixture); a case takes well under a second on a CPU.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torchvision
from captum.attr import Attribution
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from captum_regularized import attr
from captum_regularized._internal.guided_relu import (
    GuidedActivationSwitch,
    guided_and_plain_gradients,
    recording_activations,
)
from captum_regularized.metrics import gradient_alignment
from tests.model_checks import untouched

NUM_CLASSES = 10
TARGET = [1, 7]


def _convnext() -> nn.Module:
    model = torchvision.models.convnext_tiny(num_classes=NUM_CLASSES)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("layer_scale"):
                parameter.fill_(1.0)
    return model


def _vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=NUM_CLASSES,
    )
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts it at zero
    return model


@dataclass(frozen=True)
class Family:
    """How to build one family, its Grad-CAM layer (stride 16: a 2x2 map at 32x32; the
    ViT's 4x4 patch grid) and the activations the guided rule must find in it."""

    build: Callable[[], nn.Module]
    layer: str
    activations: frozenset[str]
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    map_size: int = 2


FAMILIES: dict[str, Family] = {
    "resnet18": Family(lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES),
                       "layer3", frozenset({"ReLU"})),
    "mobilenet_v2": Family(lambda: torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES),
                           "features.13", frozenset({"ReLU6"})),
    "mobilenet_v3_small": Family(
        lambda: torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES),
        "features.8", frozenset({"ReLU", "Hardswish"}),
    ),
    "efficientnet_b0": Family(
        lambda: torchvision.models.efficientnet_b0(num_classes=NUM_CLASSES),
        "features.5", frozenset({"SiLU"}),
    ),
    "convnext_tiny": Family(_convnext, "features.5", frozenset({"GELU"})),
    "regnet_y_400mf": Family(
        lambda: torchvision.models.regnet_y_400mf(num_classes=NUM_CLASSES),
        "trunk_output.block3", frozenset({"ReLU"}),
    ),
    "vit": Family(_vit, "encoder.layers.encoder_layer_1.ln_1", frozenset({"GELU"}),
                  attr.vit_tokens_to_map, map_size=4),
}

RELU_MODULE_FAMILIES = {"resnet18", "regnet_y_400mf"}
"""Built from ``nn.ReLU`` modules only (plus sigmoid gates): Captum's GuidedBackprop is right."""
NO_RELU_MODULE_FAMILIES = {"mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit"}
"""Without any ``nn.ReLU``: Captum's GuidedBackprop silently returns the plain gradient."""


@dataclass
class Built:
    name: str
    model: nn.Module
    layer: nn.Module
    family: Family


def _calibrate_batchnorm(model: nn.Module) -> None:
    """Running statistics := those of one random batch; the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None  # a cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding, relative to the map's own scale."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Different by more than 1% of the larger map's maximum."""
    return float((a - b).abs().max()) > 1e-2 * float(torch.maximum(a.abs(), b.abs()).max())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request: pytest.FixtureRequest) -> Built:
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    model = family.build()
    _calibrate_batchnorm(model)
    return Built(request.param, model, model.get_submodule(family.layer), family)


def _inputs() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _layer_kwargs(built: Built) -> dict[str, Any]:
    rt = built.family.reshape_transform
    return {} if rt is None else {"reshape_transform": rt}


Method = Callable[[Built, torch.Tensor], torch.Tensor]

METHODS: dict[str, tuple[Method, str]] = {
    # name: (call, what shape the map has: "input" or "layer")
    "PositiveSaliency": (lambda b, x: attr.PositiveSaliency(b.model).attribute(x, TARGET),
                         "input"),
    "NegativeSaliency": (lambda b, x: attr.NegativeSaliency(b.model).attribute(x, TARGET),
                         "input"),
    "ActiveSaliency": (lambda b, x: attr.ActiveSaliency(b.model).attribute(x, TARGET), "input"),
    "InactiveSaliency": (lambda b, x: attr.InactiveSaliency(b.model).attribute(x, TARGET),
                         "input"),
    "LayerRSIGradCam": (
        lambda b, x: attr.LayerRSIGradCam(b.model, b.layer).attribute(
            x, TARGET, n_steps=2, **_layer_kwargs(b)
        ),
        "layer",
    ),
    "LayerGradCamPlusPlus": (
        lambda b, x: attr.LayerGradCamPlusPlus(b.model, b.layer).attribute(
            x, TARGET, **_layer_kwargs(b)
        ),
        "layer",
    ),
    "LayerScoreCam": (
        lambda b, x: attr.LayerScoreCam(b.model, b.layer).attribute(
            x, TARGET, **_layer_kwargs(b)
        ),
        "layer",
    ),
    "GuidedBackprop": (lambda b, x: attr.GuidedBackprop(b.model).attribute(x, TARGET), "input"),
    "GuidedGradCam": (
        lambda b, x: attr.GuidedGradCam(b.model, b.layer).attribute(
            x, TARGET, **_layer_kwargs(b)
        ),
        "input",
    ),
}


def test_the_matrix_covers_every_attribution_class_of_the_package():
    classes = {
        name for name in attr.__all__
        if inspect.isclass(getattr(attr, name)) and issubclass(getattr(attr, name), Attribution)
    }
    assert classes == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_attribution_class_runs_and_leaves_the_model_as_found(built: Built, method: str):
    call, shape = METHODS[method]
    x = _inputs()
    with untouched(built.model, x):
        maps = call(built, x)
    size = built.family.map_size
    expected = x.shape if shape == "input" else (2, 1, size, size)
    assert maps.shape == expected and maps.dtype == x.dtype
    assert torch.isfinite(maps).all()
    assert not maps.requires_grad
    # (the others may be all zero on a random network: a Grad-CAM map is rectified, and
    # an active / inactive pixel must beat every other class)
    if method in ("PositiveSaliency", "NegativeSaliency", "GuidedBackprop"):
        assert maps.abs().sum() > 0, f"{method} gave an all-zero map on {built.name}"


def test_a_train_mode_model_is_left_as_found(built: Built):
    x = _inputs()
    built.model.train()
    try:
        with untouched(built.model, x):  # BatchNorm statistics included
            for method, (call, _) in METHODS.items():
                assert torch.isfinite(call(built, x)).all(), method
    finally:
        built.model.eval()


def test_the_guided_rule_finds_the_familys_activations_and_changes_the_gradient(built: Built):
    x = _inputs()
    switch = GuidedActivationSwitch()
    with recording_activations(switch):
        built.model(x.clone().requires_grad_())
    assert set(switch.families) == built.family.activations
    with untouched(built.model, x):
        _, plain, guided = guided_and_plain_gradients(built.model, x, TARGET)
        alignment = gradient_alignment(built.model, x, TARGET)
    assert differ(guided, plain)
    assert bool((alignment < 0.999).all()), alignment


def test_captum_agrees_on_relu_module_families_and_misses_the_others(built: Built):
    x = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = CaptumGuidedBackprop(built.model).attribute(x.clone(), target=TARGET)
    ours = attr.GuidedBackprop(built.model).attribute(x, TARGET)
    _, plain, _ = guided_and_plain_gradients(built.model, x, TARGET)
    if built.name in RELU_MODULE_FAMILIES:
        assert_same(ours, captum)
    elif built.name in NO_RELU_MODULE_FAMILIES:
        assert_same(captum, plain)  # Captum found nothing to guide
        assert differ(ours, captum)
    else:  # nn.ReLU and Hardswish: Captum guides the ReLUs only
        assert differ(ours, captum) and differ(captum, plain)
