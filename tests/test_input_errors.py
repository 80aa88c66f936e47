"""Newcomers' input mistakes get a clear error before the model runs, not PyTorch's.

Three mistakes that used to fall through to a raw convolution error (or to a misleading
message about labels): inputs of another dtype than the model's weights, a numpy-style
``(B, H, W, C)`` batch, and one ``(C, H, W)`` image without its batch dimension. The
shared checks (:func:`~captum_regularized._internal.checks.check_inputs_fit_model`,
called by ``check_attribution_inputs``, the perturbation metrics' preamble and
``check_training_batch``) refuse them naming the argument and the fix; the model is
left as found and never called. Legitimate inputs that look alike (a channels-last
memory format, autocast, ``C == W``, a plain function, a ``Conv1d`` model) pass.

A batch of all-zero maps makes the metrics that score maps warn once per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from captum_regularized import attr, metrics, regularizers
from captum_regularized._internal.checks import (
    check_inputs_fit_model,
    first_conv2d,
    model_floating_dtype,
)
from captum_regularized._internal.input_gradients import check_training_batch
from tests.model_checks import untouched


class CountingNet(nn.Module):
    """A small CNN that counts its forward calls (to show it was never run)."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _net(dtype: torch.dtype = torch.float32) -> CountingNet:
    torch.manual_seed(0)
    return CountingNet().to(dtype).eval()


def _labels(inputs: torch.Tensor) -> torch.Tensor:
    count = inputs.shape[0] if inputs.dim() == 4 else 1
    return torch.arange(count) % 4


def _maps_for(inputs: torch.Tensor) -> torch.Tensor:
    return torch.rand(inputs.shape[0], *inputs.shape[-2:])


def _saliency(model: nn.Module, x: torch.Tensor) -> object:
    return attr.PositiveSaliency(model).attribute(x, target=_labels(x))


def _rsi_grad_cam(model: nn.Module, x: torch.Tensor) -> object:
    layer = model.get_submodule("conv")
    return attr.LayerRSIGradCam(model, layer).attribute(x, target=_labels(x), n_steps=4)


def _deletion(model: nn.Module, x: torch.Tensor) -> object:
    return metrics.deletion_auc(model, x, _maps_for(x), target=_labels(x), steps=4)


def _guided_loss(model: nn.Module, x: torch.Tensor) -> object:
    return regularizers.GuidedGradientRegularizer(model)(x, _labels(x))


def _norm_penalty(model: nn.Module, x: torch.Tensor) -> object:
    return regularizers.GradientNormPenalty(model)(x, _labels(x))


Call = Callable[[nn.Module, torch.Tensor], object]
ATTRIBUTION_AND_METRIC: dict[str, Call] = {
    "PositiveSaliency": _saliency,
    "LayerRSIGradCam": _rsi_grad_cam,
    "deletion_auc": _deletion,
}
LOSSES: dict[str, Call] = {
    "GuidedGradientRegularizer": _guided_loss,
    "GradientNormPenalty": _norm_penalty,
}
ALL_CALLS = [pytest.param(call, id=name) for name, call in ATTRIBUTION_AND_METRIC.items()]
LOSS_CALLS = [pytest.param(call, id=name) for name, call in LOSSES.items()]
LOSS_CALLS_NEEDING_MODEL = LOSS_CALLS  # the losses check their batch against the model


def _refused(
    call: Call, model: CountingNet, x: torch.Tensor, error: type[Exception], match: str
) -> None:
    with untouched(model, x), pytest.raises(error, match=match):
        call(model, x)
    assert model.calls == 0, "the model ran before the error"


# --- dtype -----------------------------------------------------------------------------

DOUBLE_MODEL = (
    r"inputs are torch\.float32 but the model's parameters are torch\.float64; "
    r"use inputs\.to\(torch\.float64\), or model\.float\(\)"
)


@pytest.mark.parametrize("call", ALL_CALLS + LOSS_CALLS_NEEDING_MODEL)
def test_float32_inputs_to_a_float64_model(call: Call) -> None:
    _refused(call, _net(torch.float64), torch.rand(2, 3, 8, 8), TypeError, DOUBLE_MODEL)


@pytest.mark.parametrize("call", ALL_CALLS + LOSS_CALLS_NEEDING_MODEL)
def test_float64_inputs_to_a_float32_model(call: Call) -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    match = (
        r"inputs are torch\.float64 .* torch\.float32; "
        r"use inputs\.to\(torch\.float32\), or model\.double\(\)"
    )
    _refused(call, _net(), x, TypeError, match)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bfloat16"])
def test_float32_inputs_to_a_low_precision_model_name_autocast(dtype: torch.dtype) -> None:
    model = _net(dtype)
    match = (
        rf"a {dtype} model needs {dtype} inputs; "
        r"or keep the model in float32 and run it under torch\.autocast"
    )
    _refused(_saliency, model, torch.rand(2, 3, 8, 8), TypeError, match)


# --- (B, H, W, C) batches ----------------------------------------------------------------

HWC = (
    r"inputs look like \(B, H, W, C\) images, shape \(2, 8, 8, 3\)"
    r".*use inputs\.permute\(0, 3, 1, 2\)"
)


@pytest.mark.parametrize("call", ALL_CALLS + LOSS_CALLS_NEEDING_MODEL)
def test_channels_last_data_is_refused_with_the_permute(call: Call) -> None:
    _refused(call, _net(), torch.rand(2, 8, 8, 3), ValueError, HWC)


# --- a missing batch dimension ----------------------------------------------------------

NO_BATCH = (
    r"inputs look like one image \(C, H, W\) without a batch dimension"
    r".*inputs\.unsqueeze\(0\)"
)


@pytest.mark.parametrize(
    "call", [_saliency, _rsi_grad_cam], ids=["PositiveSaliency", "LayerRSIGradCam"]
)
def test_one_image_without_batch_dim_is_refused(call: Call) -> None:
    _refused(call, _net(), torch.rand(3, 8, 8), ValueError, NO_BATCH)


def test_one_image_without_batch_dim_in_a_metric_names_unsqueeze() -> None:
    match = r"inputs must be an image batch .* got shape \(3, 8, 8\); .*inputs\.unsqueeze\(0\)"
    _refused(_deletion, _net(), torch.rand(3, 8, 8), ValueError, match)


@pytest.mark.parametrize("call", LOSS_CALLS)
def test_one_image_without_batch_dim_in_a_loss_names_unsqueeze(call: Call) -> None:
    # Today: the labels message (3 "examples" against 1 label); with the model passed to
    # check_training_batch, the missing-batch message. Both name the fix.
    _refused(call, _net(), torch.rand(3, 8, 8), ValueError, r"inputs\.unsqueeze\(0\)")


@pytest.mark.parametrize(
    "loss_class",
    [regularizers.GuidedGradientRegularizer, regularizers.GradientNormPenalty],
    ids=["GuidedGradientRegularizer", "GradientNormPenalty"],
)
def test_a_loss_says_how_many_examples_and_labels(loss_class: type) -> None:
    model, x = _net(), torch.rand(4, 3, 8, 8)
    match = (
        r"labels must have one entry per example in dim 0: inputs have 4 examples "
        r"\(shape \(4, 3, 8, 8\)\), labels have 3 \(shape \(3,\)\)"
    )
    with untouched(model, x), pytest.raises(ValueError, match=match):
        loss_class(model)(x, torch.tensor([0, 1, 2]))
    assert model.calls == 0


# --- check_training_batch with the model (what the losses get once they pass it) --------


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.rand(2, 3, 8, 8, dtype=torch.float64), TypeError, r"inputs are torch\.float64"),
        (torch.rand(2, 8, 8, 3), ValueError, HWC),
        (torch.rand(3, 8, 8), ValueError, NO_BATCH),
    ],
    ids=["dtype", "hwc", "no-batch"],
)
def test_check_training_batch_with_the_model(
    x: torch.Tensor, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        check_training_batch(x, _labels(x), class_indices=True, model=_net())


def test_check_training_batch_without_a_batch_dim_names_unsqueeze_from_the_labels() -> None:
    match = r"inputs have 3 examples \(shape \(3, 8, 8\)\), labels have 1 .*inputs\.unsqueeze\(0\)"
    with pytest.raises(ValueError, match=match):
        check_training_batch(torch.rand(3, 8, 8), torch.tensor([2]), class_indices=True)


# --- no false alarms ----------------------------------------------------------------------


@pytest.mark.parametrize("call", ALL_CALLS + LOSS_CALLS)
def test_channels_last_memory_format_is_fine(call: Call) -> None:
    model = _net()
    x = torch.rand(2, 3, 8, 8).to(memory_format=torch.channels_last)
    check_inputs_fit_model((x,), model)
    out = call(model, x)
    tensors = out if isinstance(out, tuple) else (out,)
    assert all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))
    assert model.calls > 0


@pytest.mark.parametrize("call", ALL_CALLS + LOSS_CALLS)
def test_channels_equal_to_width_is_fine(call: Call) -> None:
    # (B, C, H, W) = (2, 3, 8, 3): dim 1 is the channels, the last dim happens to match.
    model = _net()
    x = torch.rand(2, 3, 8, 3)
    check_inputs_fit_model((x,), model)
    call(model, x)
    assert model.calls > 0


def test_autocast_with_float32_inputs_and_model_is_fine() -> None:
    model, x = _net(), torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = attr.PositiveSaliency(model).attribute(x, target=_labels(x))
        check_inputs_fit_model((x,), model.double())  # autocast casts: not checked
    assert maps.shape == x.shape
    model.float()


def test_a_plain_function_is_not_checked() -> None:
    model = _net(torch.float64)
    x = torch.rand(2, 8, 8, 3)  # float32, (B, H, W, C): the function converts both

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(images.permute(0, 3, 1, 2).double())

    maps = attr.PositiveSaliency(forward).attribute(x, target=_labels(x))
    assert maps.shape == x.shape and maps.dtype == torch.float32
    assert model.calls == 1


def test_models_that_are_not_clearly_checked_are_left_alone() -> None:
    # A Conv1d model fed a batch of three 3-channel signals (3-D, dim 0 == 3).
    signals = nn.Sequential(nn.Conv1d(3, 4, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                            nn.Linear(4, 2))
    x = torch.rand(3, 3, 16)
    assert first_conv2d(signals) is None
    assert attr.PositiveSaliency(signals).attribute(x, target=0).shape == x.shape
    # A one-channel model that adds the channel itself, with a batch of one (1, H, W).
    gray = nn.Sequential(nn.Unflatten(0, (1, 1)), nn.Conv2d(1, 2, 3), nn.Flatten(1),
                         nn.LazyLinear(2))
    check_inputs_fit_model((torch.rand(1, 8, 8),), gray)
    # Mixed precision (float32 norms in a half model, a float32 token registered before a
    # half stem): the inputs must match the input convolution, and do.
    mixed = nn.Sequential(nn.Conv2d(3, 2, 1).half(), nn.BatchNorm2d(2))
    mixed.register_parameter("token", nn.Parameter(torch.zeros(2)))
    assert model_floating_dtype(mixed) == torch.float16
    check_inputs_fit_model((torch.rand(1, 3, 4, 4, dtype=torch.float16),), mixed)
    # Several inputs: which one reaches the convolution is unknown.
    check_inputs_fit_model((torch.rand(2, 8, 8, 3), torch.rand(2, 8, 8, 3)), _net())


# --- all-zero maps ------------------------------------------------------------------------

ALL_ZERO = r"every map of the batch is zero: .*zero"


def test_deletion_warns_on_all_zero_maps_from_a_zero_initialised_head() -> None:
    model, x = _net(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        model.fc.weight.zero_()  # as torchvision's ViT heads start: all gradients are zero
    maps = attr.PositiveSaliency(model).attribute(x, target=_labels(x))
    assert not bool(maps.ne(0).any())
    with pytest.warns(UserWarning, match=ALL_ZERO) as caught:
        metrics.deletion_auc(model, x, maps, target=_labels(x), steps=4)
    zero_warnings = [w for w in caught if "every map of the batch is zero" in str(w.message)]
    assert len(zero_warnings) == 1
    assert zero_warnings[0].filename == __file__  # points at the user's line


@pytest.mark.parametrize("score", [metrics.pointing_game, metrics.energy_pointing_game])
def test_pointing_games_warn_on_all_zero_maps(score: Callable[..., torch.Tensor]) -> None:
    masks = torch.zeros(2, 8, 8)
    masks[:, 2:5, 2:5] = 1
    with pytest.warns(UserWarning, match=ALL_ZERO):
        result = score(torch.zeros(2, 1, 8, 8), masks)
    assert result.tolist() == [0.0, 0.0]


def test_no_zero_warning_when_one_map_is_not_zero() -> None:
    model, x = _net(), torch.rand(2, 3, 8, 8)
    maps = torch.zeros(2, 8, 8)
    maps[1, 3, 3] = 1.0
    masks = torch.ones(2, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics.deletion_auc(model, x, maps, target=_labels(x), steps=4)
        metrics.pointing_game(maps, masks)
    assert not [w for w in caught if "every map of the batch is zero" in str(w.message)]
