"""timm's ViT, DeiT and Swin, built offline and tiny, through our layer methods.

RSI-Grad-CAM with one path interval (and no final ReLU) has a closed form (the
trapezoid of the layer gradients at the baseline and the input times the activation
change), computed here with a plain forward hook and ``torch.autograd.grad``: it
checks that each reshape transform fits its model's token layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from captum_regularized import attr, metrics
from tests.model_checks import untouched

timm = pytest.importorskip("timm")

TINY_VIT = {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 3}
Reshape = Callable[[torch.Tensor], torch.Tensor]


def _vit(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    options = {"img_size": 32, **TINY_VIT, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **options).eval()


def _deit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, **TINY_VIT
    ).eval()


def _swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
        embed_dim=8, depths=(1, 1), num_heads=(1, 2), num_classes=3,
    ).eval()


def _cases() -> dict[str, tuple[nn.Module, nn.Module, Reshape, tuple[int, int]]]:
    """name -> (model, layer, reshape_transform, input size)."""
    vit, registers, wide, deit, swin = (
        _vit(), _vit(reg_tokens=2), _vit(img_size=(32, 48)), _deit(), _swin()
    )
    return {
        "vit": (vit, vit.blocks[-1].norm1, attr.vit_tokens_to_map, (32, 32)),
        "vit-registers": (
            registers,
            registers.blocks[-1].norm1,
            functools.partial(attr.vit_tokens_to_map, prefix_tokens=registers.num_prefix_tokens),
            (32, 32),
        ),
        "vit-non-square": (
            wide,
            wide.blocks[-1].norm1,
            functools.partial(attr.vit_tokens_to_map, grid=wide.patch_embed.grid_size),
            (32, 48),
        ),
        "deit-distilled": (deit, deit.blocks[-1].norm1, attr.deit_tokens_to_map, (32, 32)),
        "swin": (swin, swin.layers[-1], attr.swin_tokens_to_map, (32, 32)),
    }


CASES = _cases()


def _one_interval_rsi_cam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, reshape: Reshape
) -> torch.Tensor:
    """``sum_k mean_ij(RSI_k) A_k(x)`` with ``RSI = (G(0) + G(x)) / 2 * (A(x) - A(0))``."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: kept.append(out))
    try:
        values = []
        for point in (torch.zeros_like(x), x):
            kept.clear()
            score = model(point)[:, target].sum()
            (gradient,) = torch.autograd.grad(score, kept[0])
            values.append((reshape(kept[0].detach()), reshape(gradient)))
    finally:
        handle.remove()
    (a0, g0), (a1, g1) = values
    rsi = 0.5 * (g0 + g1) * (a1 - a0)
    return (rsi.mean(dim=(2, 3), keepdim=True) * a1).sum(dim=1, keepdim=True)


@pytest.mark.parametrize("name", list(CASES))
def test_rsi_grad_cam_fits_each_token_layout(name: str):
    model, layer, reshape, size = CASES[name]
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with untouched(model, x):
        got = attr.LayerRSIGradCam(model, layer).attribute(
            x, target=1, n_steps=1, reshape_transform=reshape, relu_attributions=False
        )
    expected = _one_interval_rsi_cam(model, layer, x, 1, reshape)
    assert got.shape == expected.shape == (2, 1, *expected.shape[2:])
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["vit", "deit-distilled", "swin"])
def test_guided_grad_cam_is_guided_backprop_times_the_upsampled_grad_cam(name: str):
    model, layer, reshape, size = CASES[name]
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: kept.append(out))
    try:
        (gradient,) = torch.autograd.grad(model(x)[:, 2].sum(), kept[0])
    finally:
        handle.remove()
    activation, gradient = reshape(kept[0].detach()), reshape(gradient)
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    upsampled = nn.functional.interpolate(cam, size=size, mode="nearest")
    guided = attr.GuidedBackprop(model).attribute(x, target=2)
    with untouched(model, x):
        got = attr.GuidedGradCam(model, layer).attribute(x, target=2, reshape_transform=reshape)
    torch.testing.assert_close(got, guided * upsampled, rtol=1e-4, atol=1e-7)


def test_signed_saliency_and_metrics_on_a_timm_vit():
    model = CASES["vit"][0]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    leaf = x.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    maps = attr.signed_saliency_maps(model, x, target=0)
    torch.testing.assert_close(maps["gradient"], gradient)
    torch.testing.assert_close(maps["positive"], gradient.clamp(min=0))
    auc = metrics.deletion_auc(model, x, maps["positive"], target=0, steps=4)
    assert auc.shape == (3,) and bool(((auc >= 0) & (auc <= 1)).all())
