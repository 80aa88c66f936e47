"""Small parts of the study: patch norms, the saturated wrapper, table formatting."""

import math

import pytest
import torch

from captum_regularized.models import SimpleCNN
from captum_regularized.study.model_zoo import ScaledLogits, TrainedModel
from captum_regularized.study.norm_adversarial_section import patch_norms
from captum_regularized.study.report import format_value


@pytest.mark.parametrize("size, patch", [(8, 4), (7, 3), (5, 5)])
def test_patch_norms_match_a_loop(size, patch, device):
    gradient = torch.randn(2, 3, size, size, device=device)
    result = patch_norms(gradient, patch)
    blocks = math.ceil(size / patch)
    assert result.shape == (2, 1, blocks, blocks) and result.device == gradient.device
    for b in range(2):
        for i in range(blocks):
            for j in range(blocks):
                block = gradient[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                expected = block.square().sum().sqrt()
                assert result[b, 0, i, j] == pytest.approx(float(expected), rel=1e-5)


def test_scaled_logits_multiply_the_inner_model():
    inner = SimpleCNN(3, width=2).eval()
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(ScaledLogits(inner, 7.0)(x), 7.0 * inner(x))


def test_grad_cam_layer_is_the_last_block():
    from torchvision.models import resnet18

    cnn = SimpleCNN(3, width=2)
    assert TrainedModel("s", 0, ScaledLogits(cnn, 2.0), 0, 0, 0).grad_cam_layer is cnn.block3
    net = resnet18(weights=None, num_classes=3)
    assert TrainedModel("r", 0, net, 0, 0, 0).grad_cam_layer is net.layer4


def test_format_value_shows_spread_only_with_several_seeds():
    assert format_value({"mean": 0.25, "std": 0.05, "per_seed": [0.2, 0.3]}) == "0.250 ± 0.050"
    assert format_value({"mean": 0.25, "std": 0.0, "per_seed": [0.25]}) == "0.250"


def test_mobilenet_pair_only_on_its_data_sets():
    """Outside ``mobilenet_data_sets`` the pair is never trained, its claims are "not
    measured" and the section says why."""
    from dataclasses import replace

    from captum_regularized.study.guided_section import MOBILENET_MODELS, run_guided_section
    from captum_regularized.study.runner import tiny_context

    context = tiny_context()
    context = replace(context, settings=replace(context.settings, mobilenet_data_sets=()))
    section = run_guided_section(context)
    assert not set(MOBILENET_MODELS.values()) & set(section.tables["models"])
    assert not any(t.recipe in MOBILENET_MODELS for t in context.zoo.trained())
    mobile = [v for v in section.verdicts() if "MobileNet-V2" in v.claim.text]
    assert len(mobile) == 3 and all(v.verdict == "not measured" for v in mobile)
    assert any("MobileNet-V2 pair is not trained" in note for note in section.notes)
