"""LayerScoreCam against pytorch-grad-cam and a per-example, per-channel loop, plus its
properties."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam
from torch import nn

from captum_regularized.attr import LayerScoreCam, vit_tokens_to_map
from captum_regularized.attr.score_cam import channel_masks
from tests.attr.cnns import captured_layer
from tests.attr.cnns import cnn_with_statistics as small_cnn
from tests.model_checks import untouched


@pytest.fixture(autouse=True)
def _full_precision_on_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(matmul_precision)


def plain_net() -> nn.Sequential:
    """conv-ReLU-conv(stride 2, the explained layer ``[2]``, 8 channels)-ReLU-conv-pool-linear."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def reference_score_cam(
    model: Callable[..., torch.Tensor],
    layer: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: list[int],
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] = identity,
    baselines: tuple[torch.Tensor, ...] | None = None,
    channel_softmax: bool = True,
    mode: str = "bilinear",
    align_corners: bool = True,
    reshape: Callable[[torch.Tensor], torch.Tensor] = identity,
    extra_args: tuple = (),
    use_input: bool = False,
) -> torch.Tensor:
    """Score-CAM written out: one example, one channel, one forward pass at a time.

    Returns ``sum_k alpha_k A_k`` (no final ReLU).
    """
    maps = []
    with torch.no_grad():
        for index, klass in enumerate(target):
            example = tuple(x[index : index + 1] for x in inputs)
            args = tuple(a[index : index + 1] if torch.is_tensor(a) and a.dim() else a
                         for a in extra_args)
            base = tuple(
                torch.zeros_like(x) if baselines is None else baselines[i][index : index + 1]
                for i, x in enumerate(example)
            )
            with captured_layer(layer, use_input) as captured:
                model(*example, *args)
            act = reshape(captured["a"])[0]
            scores = []
            for channel in range(act.shape[0]):
                masked = []
                for x, b in zip(example, base):
                    corners = align_corners if mode in ("bilinear", "bicubic") else None
                    up = F.interpolate(act[channel][None, None], size=x.shape[2:], mode=mode,
                                       align_corners=corners)[0, 0]
                    low, high = float(up.min()), float(up.max())
                    mask = (up - low) / (high - low) if high > low else torch.zeros_like(up)
                    masked.append(b + mask * (x - b))
                scores.append(float(transform(model(*masked, *args))[0, klass]))
            score = torch.tensor(scores, dtype=torch.float64)
            if channel_softmax:
                weights = torch.softmax(score, dim=0)
            else:
                weights = score - float(transform(model(*base, *args))[0, klass])
            cam = sum(float(w) * act[k].double() for k, w in enumerate(weights))
            maps.append(cam[None].float())
    return torch.stack(maps)


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "reference map is all zero: the comparison would be vacuous"
    torch.testing.assert_close(actual, expected.to(actual), rtol=rtol, atol=rtol * scale)


# --- agreement with pytorch-grad-cam and the loop -----------------------------------------


def test_matches_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = plain_net()
    layer = model[2]
    x = torch.rand(3, 3, 16, 16)
    classes = [0, 3, 4]
    targets = [ClassifierOutputTarget(c) for c in classes]
    cam = LayerScoreCam(model, layer)
    ours = cam.attribute(x, target=classes, internal_batch_size=7)
    signed = cam.attribute(x, target=classes, relu_attributions=False)
    with pgc.ScoreCAM(model, [layer]) as theirs:
        theirs.batch_size = 5
        scaled = theirs(x, targets)  # min-max scaled, resized, scaled again (one layer)
        with torch.no_grad():
            activations = layer(model[:2](x)).numpy()
        raw = theirs.get_cam_image(x, layer, targets, activations, None)
    assert float(np.abs(raw).max()) > 0
    np.testing.assert_allclose(signed[:, 0].numpy(), raw, rtol=1e-5, atol=1e-6)
    ours_scaled = scale_cam_image(scale_cam_image(ours[:, 0].numpy(), (16, 16)))
    np.testing.assert_allclose(ours_scaled, scaled, rtol=0, atol=1e-5)


def test_matches_per_channel_loop(device: torch.device) -> None:
    model = small_cnn(device)
    x = torch.rand(3, 3, 16, 16, device=device)
    target = [0, 2, 3]
    with untouched(model, x):
        ours = LayerScoreCam(model, model.block3).attribute(
            x, target=torch.tensor(target, device=device), relu_attributions=False,
            internal_batch_size=10,
        )
    expected = reference_score_cam(model, model.block3, (x,), target)
    assert ours.shape == (3, 1, 4, 4) and ours.device == x.device
    assert_maps_close(ours, expected)


def softmax(out: torch.Tensor) -> torch.Tensor:
    return torch.softmax(out, dim=1)


OPTIONS = {
    "softmax probability": (dict(output_transform="softmax"), dict(transform=softmax)),
    "increase of confidence": (dict(channel_softmax=False), dict(channel_softmax=False)),
    "baseline, no channel softmax": (
        dict(channel_softmax=False, output_transform="softmax"),
        dict(channel_softmax=False, transform=softmax),
    ),
    "bicubic, half-pixel": (
        dict(interpolate_mode="bicubic", align_corners=False),
        dict(mode="bicubic", align_corners=False),
    ),
    "nearest": (dict(interpolate_mode="nearest"), dict(mode="nearest")),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_match_the_loop(option: str) -> None:
    model = plain_net()
    x = torch.rand(2, 3, 8, 8)
    ours_kwargs, reference_kwargs = OPTIONS[option]
    baselines = None
    if option == "baseline, no channel softmax":
        baselines = (torch.rand(2, 3, 8, 8) * 0.3,)
        ours_kwargs = {**ours_kwargs, "baselines": baselines[0]}
    ours = LayerScoreCam(model, model[2]).attribute(
        x, target=[1, 4], relu_attributions=False, internal_batch_size=3, **ours_kwargs
    )
    expected = reference_score_cam(
        model, model[2], (x,), [1, 4], baselines=baselines, **reference_kwargs
    )
    assert_maps_close(ours, expected)


class TwoInputNet(nn.Module):
    """Images of two sizes, a per-example scale and a scalar shift as extra arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.mix = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, shift: float
    ) -> torch.Tensor:
        hidden = torch.relu(self.conv_a(a) + self.conv_b(b))
        hidden = torch.relu(self.mix(hidden))
        return self.head(hidden.mean(dim=(2, 3))) * scale[:, None] + shift


def test_tuple_inputs_of_two_sizes_additional_args_and_layer_input() -> None:
    model = TwoInputNet().eval()
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 16, 16)
    scale = torch.tensor([1.0, 2.0])
    cam = LayerScoreCam(model, model.mix)
    with untouched(model, a, b, scale):
        ours = cam.attribute((a, b), target=[2, 1], additional_forward_args=(scale, 0.5),
                             relu_attributions=False, internal_batch_size=5)
        at_input = cam.attribute((a, b), [2, 1], (scale, 0.5), True, False)
    expected = reference_score_cam(model, model.mix, (a, b), [2, 1], extra_args=(scale, 0.5))
    assert_maps_close(ours, expected)
    expected_input = reference_score_cam(
        model, model.mix, (a, b), [2, 1], extra_args=(scale, 0.5), use_input=True
    )
    assert_maps_close(at_input, expected_input)


def test_vision_transformer_through_reshape_transform() -> None:
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=3,
    ).eval()
    with torch.no_grad():  # torchvision starts the head at zero: every score would be equal
        nn.init.normal_(model.heads.head.weight, std=0.5)
    layer = model.encoder.layers[-1].ln_1
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):
        ours = LayerScoreCam(model, layer).attribute(
            x, target=[0, 2], reshape_transform=vit_tokens_to_map, relu_attributions=False
        )
    expected = reference_score_cam(model, layer, (x,), [0, 2], reshape=vit_tokens_to_map)
    assert ours.shape == (2, 1, 4, 4)
    assert_maps_close(ours, expected)
    with pytest.raises(ValueError, match="reshape_transform"):
        LayerScoreCam(model, layer).attribute(x, target=0)


# --- properties -------------------------------------------------------------------------


def test_internal_batch_size_does_not_change_the_result() -> None:
    model = plain_net()
    x = torch.rand(3, 3, 8, 8)
    cam = LayerScoreCam(model, model[2])
    reference = cam.attribute(x, target=[1, 0, 3], attr_dim_summation=False)
    for rows in (1, 7, 8, 10**6):
        torch.testing.assert_close(
            cam.attribute(x, target=[1, 0, 3], attr_dim_summation=False, internal_batch_size=rows),
            reference, rtol=1e-5, atol=1e-7,
        )


def test_forward_passes_have_at_most_internal_batch_size_rows() -> None:
    model = small_cnn()
    rows: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        LayerScoreCam(model, model.block3).attribute(
            torch.rand(3, 3, 16, 16), target=0, internal_batch_size=10
        )
    finally:
        handle.remove()
    assert rows == [3, 10, 10, 10, 10, 8]  # the inputs, then 3 x 16 masked inputs


def test_shapes_channels_and_the_final_relu() -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    cam = LayerScoreCam(model, model.block3[0])  # a convolution: signed activations
    signed = dict(target=1, channel_softmax=False)  # and signed weights
    summed = cam.attribute(x, relu_attributions=False, **signed)
    channels = cam.attribute(x, relu_attributions=False, attr_dim_summation=False, **signed)
    assert summed.shape == (3, 1, 4, 4) and channels.shape == (3, 16, 4, 4)
    torch.testing.assert_close(channels.sum(dim=1, keepdim=True), summed)
    assert (summed < 0).any() and (summed > 0).any()
    torch.testing.assert_close(cam.attribute(x, **signed), summed.clamp(min=0))
    torch.testing.assert_close(
        cam.attribute(x, attr_dim_summation=False, **signed), channels.clamp(min=0)
    )
    reference = LayerGradCam(model, model.block3[0]).attribute(
        x, target=1, attr_dim_summation=False
    )
    assert reference.shape == channels.shape
    assert cam.attribute(x[:0], target=1).shape == (0, 1, 4, 4)


def test_batch_of_one_is_the_batchs_row_and_targets_agree() -> None:
    model = plain_net()
    x = torch.rand(3, 3, 8, 8)
    cam = LayerScoreCam(model, model[2])
    predicted = model(x).argmax(dim=1)
    whole = cam.attribute(x, internal_batch_size=9)  # target=None: the predicted class
    torch.testing.assert_close(whole, cam.attribute(x, target=predicted.tolist()))
    for row in range(3):
        alone = cam.attribute(x[row : row + 1], target=int(predicted[row]))
        torch.testing.assert_close(alone[0], whole[row], rtol=1e-4, atol=1e-6)
    callables = [lambda out, k=int(k): out[k] for k in predicted]
    torch.testing.assert_close(cam.attribute(x, target=callables, internal_batch_size=5), whole)
    torch.testing.assert_close(
        cam.attribute(x, target=lambda out: out[:, 2]), cam.attribute(x, target=2)
    )


def test_constant_channels_give_zero_masks() -> None:
    maps = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    masks = channel_masks(maps, (4, 4))
    assert masks.shape == (2, 1, 4, 4)
    assert float(masks[0].min()) == 0.0 and float(masks[0].max()) == 1.0
    assert torch.equal(masks[1], torch.zeros(1, 4, 4))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_left_as_found_and_inference_mode(mode: str) -> None:
    model = small_cnn().train(mode == "train")
    model.block3[0].weight.requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    cam = LayerScoreCam(model, model.block3)
    with untouched(model, x):  # hooks, modes, flags, BatchNorm statistics, the inputs
        expected = cam.attribute(x, target=0, internal_batch_size=8)
        with torch.inference_mode():
            inside = cam.attribute(x, target=0, internal_batch_size=8)
        with pytest.raises(ValueError, match="target"):
            cam.attribute(x, target=[0, 1, 2])
    assert all(p.grad is None for p in model.parameters())
    assert not expected.requires_grad
    torch.testing.assert_close(inside, expected)


def test_autocast_gives_float32_maps_close_to_float32() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerScoreCam(model, model.block3)
    reference = cam.attribute(x, target=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cam.attribute(x, target=1)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    cosine = nn.functional.cosine_similarity(reference.flatten(1), low.flatten(1))
    assert (cosine > 0.9).all(), cosine


# --- bad input --------------------------------------------------------------------------


NAN_INPUT = torch.full((2, 3, 16, 16), float("nan"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(internal_batch_size=0), ValueError, "internal_batch_size must be at least 1"),
        (dict(internal_batch_size=2.5), TypeError, "internal_batch_size must be an int"),
        (dict(internal_batch_size=True), TypeError, "internal_batch_size must be an int"),
        (dict(interpolate_mode="linear"), ValueError, "interpolate_mode must be one of"),
        (dict(align_corners="yes"), TypeError, "align_corners must be a bool"),
        (dict(channel_softmax=None), TypeError, "channel_softmax must be a bool"),
        (dict(output_transform="sigmoid"), ValueError, "output_transform"),
        (dict(output_transform=3), TypeError, "output_transform"),
        (dict(baselines=torch.zeros(3, 3, 16, 16)), ValueError, "baselines"),
        (dict(baselines=True), TypeError, "baselines"),
        (dict(reshape_transform="tokens"), TypeError, "reshape_transform must be callable"),
        (dict(target=7), ValueError, r"target.*\[0, 3\]"),
        (dict(target=[0, 1, 2]), ValueError, "target"),
        (dict(target=[lambda row: row[0]] * 3), ValueError, "target"),
        (dict(target=lambda out: out.sum()), ValueError, "one score per example"),
        (dict(inputs=NAN_INPUT), ValueError, r"inputs\[0\] contains NaN"),
        (dict(inputs=torch.rand(2, 3, 16)), ValueError, r"inputs\[0\] must have shape"),
        (dict(inputs=torch.zeros(2, 3, 16, 16, dtype=torch.long)), TypeError, "floating"),
        (dict(inputs=[[1.0]]), TypeError, "inputs must be a torch.Tensor"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(
    kwargs: dict, error: type, message: str
) -> None:
    model = small_cnn()
    x = kwargs.pop("inputs", torch.rand(2, 3, 16, 16))
    with untouched(model), pytest.raises(error, match=message):
        LayerScoreCam(model, model.block3).attribute(x, **kwargs)


def test_layer_problems_are_clear_errors() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"layer .* not a submodule"):
        LayerScoreCam(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"layer must be an nn\.Module"):
        LayerScoreCam(model, "block3")  # type: ignore[arg-type]
    with untouched(model, x), pytest.raises(ValueError, match=r"\(batch, channels"):
        LayerScoreCam(model, model.classifier).attribute(x, target=0)
    shared = nn.Conv2d(2, 2, 1)
    twice = nn.Sequential(shared, shared, nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(ValueError, match="more than once"):
        LayerScoreCam(twice, shared).attribute(torch.rand(2, 2, 4, 4), target=0)
    unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="never ran"):
        LayerScoreCam(lambda t: model(t), unused).attribute(x, target=0)
    with untouched(model, x), pytest.raises(ValueError, match="keep the batch in dim 0"):
        LayerScoreCam(lambda t: model(t)[:1], model.block3).attribute(x, target=0)
