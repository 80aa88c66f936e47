"""Issue 12 contract gaps of ``attr.LayerRSIGradCam`` (and its path-batching engine).

Each test is named after the gap it closes. References are written out here: a plain
one-forward-per-path-point loop, the same model without checkpointing, or a property
(shape, dtype, untouched model) that the broken behaviour violates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import NoiseTunnel
from torch import nn
from torch.utils.checkpoint import checkpoint

from captum_regularized.attr import LayerRSIGradCam, PositiveSaliency
from captum_regularized.attr.rsi_grad_cam.path_batching import plan_path
from captum_regularized.models import SimpleCNN
from tests.attr.cnns import cnn_with_statistics
from tests.model_checks import assert_no_hooks, untouched


def loop_reference(
    forward: Callable[..., torch.Tensor],
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    n_steps: int,
    extra_args: tuple[Any, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed plain RSI-Grad-CAM map and delta, one forward/backward per point, zero baseline."""
    activations, gradients, scores = [], [], []
    for step in range(n_steps + 1):
        point = ((step / n_steps) * x).requires_grad_()
        seen: dict[str, torch.Tensor] = {}
        handle = layer.register_forward_hook(lambda m, i, o, seen=seen: seen.update(a=o))
        try:
            out = forward(point, *extra_args)
        finally:
            handle.remove()
        score = out.gather(1, target[:, None])[:, 0]
        (grad,) = torch.autograd.grad(score.sum(), seen["a"])
        activations.append(seen["a"].detach())
        gradients.append(grad)
        scores.append(score.detach())
    rsi = sum(
        0.5 * (gradients[s - 1] + gradients[s]) * (activations[s] - activations[s - 1])
        for s in range(1, n_steps + 1)
    )
    assert isinstance(rsi, torch.Tensor)
    weights = rsi.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activations[-1]).sum(dim=1, keepdim=True)
    return cam, rsi.sum(dim=(1, 2, 3)) - (scores[-1] - scores[0])


def small_cnn() -> SimpleCNN:
    return cnn_with_statistics(num_classes=3)


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "the reference is all zero: the comparison would be vacuous"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# --- gap 6: shared (non-batch) tensors in additional_forward_args -----------------------


class BiasedNet(nn.Module):
    """Logits ``* scale[b] + bias + shift``: a per-example, a shared and a 0-d tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        hidden = torch.tanh(self.conv(x)).mean(dim=(2, 3))
        return self.head(hidden) * scale[:, None] + bias + shift


@pytest.mark.parametrize(
    ("batch", "internal_batch_size"), [(2, None), (2, 1), (2, 5), (5, 3), (5, 10)]
)
def test_gap_6_shared_tensor_arguments_pass_unchanged(
    batch: int, internal_batch_size: int | None
) -> None:
    model = BiasedNet().eval()
    x = torch.rand(batch, 3, 6, 6)
    scale = torch.linspace(0.5, 2.0, batch)
    # (3,) is shared; with batch 5 and internal_batch_size 3 the first group has 3
    # examples, so a shared tensor must not be recognised by the group's size
    bias = torch.tensor([0.3, -1.0, 2.0])
    shift = torch.tensor(0.25)
    target = torch.arange(batch) % 3
    with untouched(model, x, scale, bias, shift):
        ours, delta = LayerRSIGradCam(model, model.conv).attribute(
            x, target=target, additional_forward_args=(scale, bias, shift), n_steps=4,
            relu_attributions=False, internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    expected, expected_delta = loop_reference(
        model, model.conv, x, target, 4, extra_args=(scale, bias, shift)
    )
    assert_close_to(ours, expected)
    torch.testing.assert_close(delta, expected_delta, rtol=1e-4, atol=1e-6)


# --- gap 7: empty batch --------------------------------------------------------------


def test_gap_7_plan_of_an_empty_batch_has_no_rows() -> None:
    for internal_batch_size in (None, 1, 4):
        plan = plan_path(0, 3, internal_batch_size)
        assert [list(range(0)[rows]) for rows in plan.example_groups] == [[]]
        assert [s for chunk in plan.step_chunks for s in chunk] == [3, 2, 1, 0]


@pytest.mark.parametrize("internal_batch_size", [None, 1, 4])
@pytest.mark.parametrize("target", [1, None, []])
def test_gap_7_empty_batch_gives_empty_maps_and_deltas(
    internal_batch_size: int | None, target: Any
) -> None:
    model = small_cnn()
    x = torch.rand(0, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    with untouched(model, x):
        maps, delta = cam.attribute(
            x, target=target, n_steps=3, internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    full = cam.attribute(torch.rand(2, 3, 16, 16), target=1, n_steps=3)
    assert maps.shape == (0, *full.shape[1:]) and maps.dtype == full.dtype
    assert delta.shape == (0,) and delta.dtype == x.dtype
    # like the signed saliency maps, which return an empty batch of the input's shape
    assert PositiveSaliency(model).attribute(x, target=1).shape == x.shape


def test_gap_7_empty_batch_still_checks_the_target() -> None:
    model = small_cnn()
    x = torch.rand(0, 3, 16, 16)
    with untouched(model, x), pytest.raises(ValueError, match="target"):
        LayerRSIGradCam(model, model.block3).attribute(x, target=5, n_steps=2)


# --- gap 10: activation checkpointing around the layer ---------------------------------


class CheckpointedNet(nn.Module):
    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        if self.use_reentrant is None:
            h = self.block(h)
        else:
            h = checkpoint(self.block, h, use_reentrant=self.use_reentrant)
        return self.head(torch.tanh(h))


def _layers(model: CheckpointedNet) -> dict[str, nn.Module]:
    return {"first": model.block[0], "last": model.block[2], "block": model.block}


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("which", ["first", "last", "block"])
@pytest.mark.parametrize("to_input", [False, True])
def test_gap_10_reentrant_checkpointing_is_named(which: str, to_input: bool) -> None:
    model = CheckpointedNet(use_reentrant=True).eval()
    x = torch.rand(2, 3, 8, 8)
    layer = _layers(model)[which]
    with untouched(model, x), pytest.raises(ValueError, match="reentrant") as error:
        LayerRSIGradCam(model, layer).attribute(
            x, target=1, n_steps=2, attribute_to_layer_input=to_input
        )
    assert "use_reentrant=False" in str(error.value)


@pytest.mark.parametrize("which", ["first", "last", "block"])
@pytest.mark.parametrize("to_input", [False, True])
def test_gap_10_non_reentrant_checkpointing_matches_the_plain_model(
    which: str, to_input: bool
) -> None:
    torch.manual_seed(1)
    plain = CheckpointedNet(use_reentrant=None).eval()
    checkpointed = CheckpointedNet(use_reentrant=False).eval()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 8, 8)
    kwargs = dict(target=[1, 2], n_steps=3, attribute_to_layer_input=to_input,
                  relu_attributions=False)
    expected = LayerRSIGradCam(plain, _layers(plain)[which]).attribute(x, **kwargs)
    with untouched(checkpointed, x):
        ours = LayerRSIGradCam(checkpointed, _layers(checkpointed)[which]).attribute(x, **kwargs)
    assert_close_to(ours, expected, rtol=1e-5)


class GradModeNet(nn.Module):
    """The layer under ``torch.no_grad()`` (``"off"``), or a forward that turns autograd on."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            with torch.no_grad():
                hidden = self.conv(x)
        else:
            hidden = self.conv(x)
        return self.head(torch.tanh(hidden).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "on":
            with torch.enable_grad():
                return self._forward(x)
        return self._forward(x)


@pytest.mark.parametrize("to_input", [False, True])
def test_gap_10_layer_under_no_grad_is_named(to_input: bool) -> None:
    model = GradModeNet("off")
    x = torch.rand(2, 3, 8, 8)
    with untouched(model, x), pytest.raises(ValueError, match="autograd switched off"):
        LayerRSIGradCam(model, model.conv).attribute(
            x, target=1, n_steps=2, attribute_to_layer_input=to_input
        )


@pytest.mark.parametrize("to_input", [False, True])
def test_gap_10_forward_enabling_autograd_itself_is_not_taken_for_checkpointing(
    to_input: bool,
) -> None:
    plain, enabling = GradModeNet("plain"), GradModeNet("on")
    enabling.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 8, 8)
    kwargs = dict(target=[0, 2], n_steps=3, attribute_to_layer_input=to_input,
                  relu_attributions=False)
    expected = LayerRSIGradCam(plain, plain.conv).attribute(x, **kwargs)
    with untouched(enabling, x):
        ours = LayerRSIGradCam(enabling, enabling.conv).attribute(x, **kwargs)
    assert_close_to(ours, expected, rtol=1e-6)


# --- gap 15: BatchNorm statistics behind a plain function ---------------------------------


def test_gap_15_wrapped_train_mode_model_keeps_its_batchnorm_statistics() -> None:
    model = small_cnn().train()
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):  # buffers (running statistics) and global hooks included
        maps = LayerRSIGradCam(lambda t: model(t), model.block3).attribute(
            x, target=1, n_steps=3
        )
    assert maps.shape == (2, 1, 4, 4)
    with untouched(model, x), pytest.raises(ValueError, match="target"):
        # fails after the first pass already ran through the BatchNorm layers
        LayerRSIGradCam(lambda t: model(t), model.block3).attribute(x, target=9, n_steps=3)
    assert model.training


# --- gap 17: compute_convergence_delta ---------------------------------------------------


def test_gap_17_compute_convergence_delta_points_to_return_convergence_delta() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    maps = cam.attribute(x, target=1, n_steps=3)
    with pytest.raises(NotImplementedError, match="return_convergence_delta=True"):
        cam.compute_convergence_delta(maps, torch.zeros_like(x), x, target=1)
    assert cam.has_convergence_delta()


def test_gap_17_noise_tunnel_still_returns_the_real_deltas() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    _, delta = cam.attribute(
        x, target=[1, 2], n_steps=3, output_transform="softmax", return_convergence_delta=True
    )
    _, expected = loop_reference(
        lambda t: torch.softmax(model(t), dim=1), model.block3, x, torch.tensor([1, 2]), 3
    )
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    _, tunnel_delta = NoiseTunnel(cam).attribute(
        x, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=[1, 2], n_steps=3,
        output_transform="softmax", return_convergence_delta=True,
    )
    torch.testing.assert_close(tunnel_delta, delta.repeat_interleave(2))


# --- contract list: dtype under autocast, bad targets, inference mode ------------------------


def test_gap_autocast_maps_and_deltas_keep_the_input_dtype() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    full_precision = cam.attribute(x, target=1, n_steps=4, relu_attributions=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, delta = cam.attribute(
            x, target=1, n_steps=4, relu_attributions=False, return_convergence_delta=True
        )
        saliency = PositiveSaliency(model).attribute(x, target=1)
    assert saliency.dtype == torch.float32  # the other methods' behaviour
    assert maps.dtype == x.dtype and delta.dtype == x.dtype
    assert_close_to(maps, full_precision, rtol=0.1)


def test_gap_float64_inputs_give_float64_maps_and_deltas() -> None:
    model = small_cnn().double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    maps, delta = LayerRSIGradCam(model, model.block3).attribute(
        x, target=1, n_steps=2, return_convergence_delta=True
    )
    assert maps.dtype == delta.dtype == torch.float64


@pytest.mark.parametrize(
    "target",
    [
        True,
        torch.tensor([True, False]),
        torch.tensor([0.0, 1.0]),
        1.5,
        "1",
        torch.tensor([[0], [1]]),
        torch.tensor([0, 1, 2]),
        [0, 1, 2],
        [0, "a"],
        [True, False],
        (0, 1),
        -1,
        torch.tensor(3),
        {0: 1},
    ],
    ids=repr,
)
@pytest.mark.parametrize("internal_batch_size", [None, 1])
def test_gap_bad_target_forms_name_target(target: Any, internal_batch_size: int | None) -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x), pytest.raises((ValueError, TypeError), match="target"):
        LayerRSIGradCam(model, model.block3).attribute(
            x, target=target, n_steps=2, internal_batch_size=internal_batch_size
        )


@pytest.mark.parametrize("internal_batch_size", [None, 3])
def test_gap_output_without_the_batch_in_dim_0_is_named(internal_batch_size: int | None) -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    pooled = LayerRSIGradCam(lambda t: model(t).sum(dim=0, keepdim=True), model.block3)
    with untouched(model, x), pytest.raises(ValueError, match="batch in dim 0"):
        pooled.attribute(x, target=1, n_steps=2, internal_batch_size=internal_batch_size)


def test_gap_inference_mode_uses_the_shared_message() -> None:
    model = small_cnn()
    with torch.inference_mode(), pytest.raises(
        RuntimeError, match=r"LayerRSIGradCam needs autograd .*inference_mode\(False\)"
    ):
        LayerRSIGradCam(model, model.block3).attribute(torch.rand(1, 3, 16, 16), target=0)
    assert_no_hooks(model)
