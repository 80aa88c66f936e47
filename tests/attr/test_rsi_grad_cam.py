"""LayerRSIGradCam against an independent one-pass-per-step loop, plus its properties."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from captum_regularized.attr import LayerRSIGradCam, vit_tokens_to_map
from tests.attr.cnns import captured_layer
from tests.attr.cnns import cnn_with_statistics as small_cnn
from tests.model_checks import untouched

VARIANTS = ["plain", "unit_selection", "relu_gradients"]


@pytest.fixture(autouse=True)
def _full_precision_on_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TF32 convolutions would blur comparisons at 1e-4; these tests check the method."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(matmul_precision)


def reference_rsi_grad_cam(
    model: Callable[..., torch.Tensor],
    layer: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    baselines: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    n_steps: int,
    variant: str = "plain",
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
    reshape: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    extra_args: tuple = (),
    use_input: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The method written out plainly: one forward/backward per path point.

    ``use_input`` takes the layer's input (with autograd through every use of it)
    instead of its output. Returns the signed map ``sum_k w_k A_m,k`` (no final relu)
    and the plain delta.
    """
    activations, gradients, scores = [], [], []
    for step in range(n_steps + 1):
        point = tuple(
            (b + (step / n_steps) * (x - b)).detach().requires_grad_()
            for x, b in zip(inputs, baselines)
        )
        with captured_layer(layer, use_input) as captured:
            out = transform(model(*point, *extra_args))
        score = out.gather(1, target[:, None])[:, 0]
        (grad,) = torch.autograd.grad(score.sum(), captured["a"])
        activations.append(reshape(captured["a"].detach()))
        gradients.append(reshape(grad))
        scores.append(score.detach())
    plain = sum(
        0.5 * (gradients[s - 1] + gradients[s]) * (activations[s] - activations[s - 1])
        for s in range(1, n_steps + 1)
    )
    delta = plain.sum(dim=(1, 2, 3)) - (scores[-1] - scores[0])
    if variant == "relu_gradients":
        rsi = sum(
            0.5 * (gradients[s - 1].clamp(min=0) + gradients[s].clamp(min=0))
            * (activations[s] - activations[s - 1])
            for s in range(1, n_steps + 1)
        )
    elif variant == "unit_selection":
        a_m, a_0 = activations[-1], activations[0]
        rsi = torch.where((a_m > 0) & (plain > 0) & (a_m - a_0 > 0), plain, torch.zeros_like(plain))
    else:
        rsi = plain
    weights = rsi.mean(dim=(2, 3), keepdim=True)
    return (weights * activations[-1]).sum(dim=1, keepdim=True), delta


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "reference map is all zero: the comparison would be vacuous"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def softmax(out: torch.Tensor) -> torch.Tensor:
    return torch.softmax(out, dim=1)


class TwoInputNet(nn.Module):
    """Two image inputs, a per-example scale and a scalar shift as extra arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)
        self.unused = nn.Conv2d(6, 6, 1)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, shift: float
    ) -> torch.Tensor:
        hidden = torch.relu(self.conv_a(a) + self.conv_b(b))
        hidden = torch.tanh(self.mix(hidden))
        return self.head(hidden.amax(dim=(2, 3))) * scale[:, None] + shift


def tiny_vit() -> torchvision.models.VisionTransformer:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    ).eval()
    with torch.no_grad():  # torchvision starts the head at zero, which makes every gradient zero
        nn.init.normal_(model.heads.head.weight, std=0.5)
        nn.init.normal_(model.class_token, std=0.5)
    return model


# --- agreement with the independent loop -------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_per_step_loop(variant: str, device: torch.device) -> None:
    model = small_cnn(device)
    x = torch.rand(3, 3, 16, 16, device=device)
    baseline = torch.rand(1, 3, 16, 16, device=device) * 0.2
    target = torch.tensor([0, 2, 3], device=device)
    with untouched(model, x, baseline):
        ours = LayerRSIGradCam(model, model.block3).attribute(
            x, target=target, baselines=baseline, n_steps=7, output_transform="softmax",
            variant=variant, relu_attributions=False, internal_batch_size=5,
        )
    expected, _ = reference_rsi_grad_cam(
        model, model.block3, (x,), (baseline,), target, 7, variant, softmax
    )
    assert ours.shape == (3, 1, 4, 4) and ours.device == x.device
    assert_maps_close(ours, expected)


def test_relu_attributions_is_the_final_relu() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    signed = cam.attribute(x, target=1, n_steps=4, relu_attributions=False)
    assert (signed < 0).any() and (signed > 0).any()
    torch.testing.assert_close(cam.attribute(x, target=1, n_steps=4), signed.clamp(min=0))


def test_log_softmax_and_callable_output_transforms() -> None:
    model = small_cnn()
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([1, 3])
    cam = LayerRSIGradCam(model, model.block3)
    named = cam.attribute(
        x, target=target, n_steps=5, output_transform="log_softmax", relu_attributions=False
    )
    custom = cam.attribute(
        x, target=target, n_steps=5, relu_attributions=False,
        output_transform=lambda out: torch.log_softmax(out, dim=1),
    )
    expected, _ = reference_rsi_grad_cam(
        model, model.block3, (x,), (torch.zeros_like(x),), target, 5,
        transform=lambda out: torch.log_softmax(out, dim=1),
    )
    assert_maps_close(named, expected)
    torch.testing.assert_close(custom, named)


def test_one_step_is_the_two_point_trapezoid() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    ours = LayerRSIGradCam(model, model.block3).attribute(
        x, target=2, n_steps=1, relu_attributions=False, internal_batch_size=1
    )
    expected, _ = reference_rsi_grad_cam(
        model, model.block3, (x,), (torch.zeros_like(x),), torch.tensor([2, 2]), 1
    )
    assert_maps_close(ours, expected)


def test_target_none_is_the_predicted_class_of_the_input() -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    predicted = model(x).argmax(dim=1)
    cam = LayerRSIGradCam(model, model.block3)
    implicit = cam.attribute(x, n_steps=6, output_transform="softmax", internal_batch_size=4)
    explicit = cam.attribute(x, target=predicted.tolist(), n_steps=6, output_transform="softmax")
    torch.testing.assert_close(implicit, explicit)


# --- completeness ----------------------------------------------------------------------


def test_completeness_delta_shrinks_with_steps_at_a_cut_point() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    cam = LayerRSIGradCam(model, model.layer4)
    deltas = [
        cam.attribute(x, target=[1, 7], n_steps=n, output_transform="softmax",
                      return_convergence_delta=True)[1].abs().max()
        for n in (2, 8, 32)
    ]
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < 0.05 * deltas[0]
    # the head after layer4 (pooling + linear) is linear in the activation, so the
    # trapezoid is exact for the logits
    _, delta = cam.attribute(x, target=[1, 7], n_steps=3, return_convergence_delta=True)
    with torch.no_grad():
        gap = model(x)[:, [1, 7]].diagonal() - model(torch.zeros_like(x))[:, [1, 7]].diagonal()
    scale = gap.abs()
    assert (delta.abs() <= 1e-4 * scale.max() + 1e-6).all()


def test_delta_matches_the_loop() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    target = torch.tensor([3, 0])
    _, delta = LayerRSIGradCam(model, model.block3).attribute(
        x, target=target, n_steps=4, output_transform="softmax", return_convergence_delta=True
    )
    _, expected = reference_rsi_grad_cam(
        model, model.block3, (x,), (torch.zeros_like(x),), target, 4, transform=softmax
    )
    assert delta.shape == (2,)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    assert LayerRSIGradCam(model, model.block3).has_convergence_delta()


# --- invariances ---------------------------------------------------------------------


def test_batch_equals_examples_one_by_one() -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    target = [2, 0, 1]
    cam = LayerRSIGradCam(model, model.block3)
    together = cam.attribute(x, target=target, n_steps=6, output_transform="softmax")
    alone = torch.cat([
        cam.attribute(x[i : i + 1], target=target[i], n_steps=6, output_transform="softmax")
        for i in range(3)
    ])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7 * float(alone.abs().max()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_internal_batch_size_does_not_change_the_result(variant: str) -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    results = [
        cam.attribute(x, target=[0, 1, 2], n_steps=9, output_transform="softmax", variant=variant,
                      internal_batch_size=size, relu_attributions=False)
        for size in (None, 1, 2, 3, 7, 30)
    ]
    scale = float(results[0].abs().max())
    assert scale > 0
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-6, atol=1e-6 * scale)


def test_automatic_pass_size_on_cpu_splits_the_path_without_changing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from captum_regularized.attr.rsi_grad_cam import path_batching

    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    cam = LayerRSIGradCam(model, model.block3)
    passes = []
    handle = model.register_forward_hook(lambda m, i, o: passes.append(o.shape[0]))
    try:
        one_pass = cam.attribute(x, target=1, n_steps=9, internal_batch_size=10**6)
        assert passes == [30]
        passes.clear()
        monkeypatch.setattr(path_batching, "CPU_PASS_ELEMENTS", 4 * 3 * 16 * 16)  # 4 rows
        automatic = cam.attribute(x, target=1, n_steps=9)
    finally:
        handle.remove()
    assert passes == [3] * 10  # 3 examples, one path point per pass
    torch.testing.assert_close(automatic, one_pass, rtol=1e-6, atol=1e-7)


# --- input forms and layers ------------------------------------------------------------


@pytest.mark.parametrize("internal_batch_size", [None, 1, 3])
def test_tuple_inputs_and_additional_forward_args(internal_batch_size: int | None) -> None:
    model = TwoInputNet().eval()
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    base_a, base_b = torch.full((1, 3, 8, 8), 0.1), torch.zeros(2, 1, 8, 8)
    scale = torch.tensor([1.0, -2.0])
    target = torch.tensor([2, 1])
    with untouched(model, a, b, scale):
        ours = LayerRSIGradCam(model, model.mix).attribute(
            (a, b), target=target, additional_forward_args=(scale, 0.5),
            baselines=(base_a, base_b),
            n_steps=5, relu_attributions=False, internal_batch_size=internal_batch_size,
        )
    expected, _ = reference_rsi_grad_cam(
        model, model.mix, (a, b), (base_a, base_b), target, 5, extra_args=(scale, 0.5)
    )
    assert_maps_close(ours, expected)


def test_scalar_baseline_and_attribute_to_layer_input() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam_kwargs = dict(target=1, n_steps=4, baselines=0.5, relu_attributions=False)
    of_input = LayerRSIGradCam(model, model.block3).attribute(
        x, attribute_to_layer_input=True, **cam_kwargs
    )
    of_previous_output = LayerRSIGradCam(model, model.block2).attribute(x, **cam_kwargs)
    expected, _ = reference_rsi_grad_cam(
        model, model.block2, (x,), (torch.full_like(x, 0.5),), torch.tensor([1, 1]), 4
    )
    assert_maps_close(of_previous_output, expected)
    torch.testing.assert_close(of_input, of_previous_output)


class SkipBlockNet(nn.Module):
    """``h + block(h)``: the block's input is used twice, so its gradient has two paths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h * h + self.block(h))


@pytest.mark.parametrize("frozen", [False, True])
def test_layer_input_gradient_flows_through_skip_connections(frozen: bool) -> None:
    torch.manual_seed(3)
    model = SkipBlockNet()
    for param in model.parameters():
        param.requires_grad_(not frozen)
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    with untouched(model, x):
        ours = LayerRSIGradCam(model, model.block).attribute(
            x, target=target, n_steps=6, attribute_to_layer_input=True,
            relu_attributions=False,
        )
    expected, _ = reference_rsi_grad_cam(
        model, model.block, (x,), (torch.zeros_like(x),), target, 6, use_input=True
    )
    assert_maps_close(ours, expected)


def test_vision_transformer_through_reshape_transform() -> None:
    model = tiny_vit()
    layer = model.encoder.layers[-1].ln_1
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([0, 2])
    with untouched(model, x):
        ours = LayerRSIGradCam(model, layer).attribute(
            x, target=target, n_steps=4, output_transform="softmax",
            reshape_transform=vit_tokens_to_map, relu_attributions=False,
        )
    expected, _ = reference_rsi_grad_cam(
        model, layer, (x,), (torch.zeros_like(x),), target, 4, transform=softmax,
        reshape=vit_tokens_to_map,
    )
    assert ours.shape == (2, 1, 4, 4)
    assert_maps_close(ours, expected)


def test_upsampled_like_grad_cam_and_frozen_model_in_train_mode() -> None:
    model = small_cnn().train()
    for param in model.parameters():
        param.requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):  # BatchNorm running statistics included
        ours = LayerRSIGradCam(model, model.block3).attribute(x, target=0, n_steps=3)
    reference = LayerGradCam(model, model.block3).attribute(x, target=0)
    assert ours.shape == reference.shape
    assert LayerAttribution.interpolate(ours, (16, 16)).shape == (2, 1, 16, 16)
    assert model.training


# --- bad input -------------------------------------------------------------------------


def test_layer_outside_the_model_is_rejected() -> None:
    model = small_cnn()
    with pytest.raises(ValueError, match=r"layer .* not a submodule"):
        LayerRSIGradCam(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"layer must be an nn\.Module"):
        LayerRSIGradCam(model, "block3")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(n_steps=0), ValueError, "n_steps must be at least 1"),
        (dict(n_steps=2.5), TypeError, "n_steps must be an int"),
        (dict(baselines=torch.zeros(2, 3, 8, 8)), ValueError, "baselines"),
        (dict(variant="guided"), ValueError, "variant must be one of"),
        (dict(output_transform="sigmoid"), ValueError, "output_transform"),
        (
            dict(variant="relu_gradients", return_convergence_delta=True),
            ValueError,
            "return_convergence_delta",
        ),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
        (dict(target=7), ValueError, "target"),
        (dict(target=[0, 1, 2]), ValueError, "target"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(
    kwargs: dict, error: type, message: str
) -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x), pytest.raises(error, match=message):
        LayerRSIGradCam(model, model.block3).attribute(x, **kwargs)


def test_layer_that_never_runs_is_a_clear_error() -> None:
    model = TwoInputNet()
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    with untouched(model, a, b), pytest.raises(ValueError, match="never ran"):
        LayerRSIGradCam(model, model.unused).attribute(
            (a, b), target=0, additional_forward_args=(torch.ones(2), 0.0)
        )


def test_layer_running_twice_is_a_clear_error() -> None:
    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(shared, shared, nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    x = torch.rand(2, 2, 4, 4)
    with untouched(model, x), pytest.raises(ValueError, match="more than once"):
        LayerRSIGradCam(model, shared).attribute(x, target=0, n_steps=2)


def test_non_4d_layer_output_needs_a_reshape_transform() -> None:
    model = tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    with untouched(model, x), pytest.raises(ValueError, match="reshape_transform"):
        LayerRSIGradCam(model, model.encoder.layers[-1].ln_1).attribute(x, target=0, n_steps=2)
    cnn = small_cnn()
    with untouched(cnn, x[:, :, :16, :16]), pytest.raises(ValueError, match=r"\(batch, channels"):
        LayerRSIGradCam(cnn, cnn.classifier).attribute(x[:, :, :16, :16], target=0, n_steps=2)


def test_vit_tokens_to_map_rejects_non_square_grids() -> None:
    with pytest.raises(ValueError, match="perfect square"):
        vit_tokens_to_map(torch.zeros(1, 1 + 6, 4))
    with pytest.raises(ValueError, match="batch, tokens, channels"):
        vit_tokens_to_map(torch.zeros(1, 4, 2, 2))


def test_layer_off_the_output_path_is_a_clear_error() -> None:
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Conv2d(3, 2, 1)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.side(x)  # runs, but the output ignores it
            return self.head(x.mean(dim=(2, 3)))

    model = SideBranch()
    x = torch.rand(2, 3, 4, 4)
    with untouched(model, x), pytest.raises(ValueError, match="does not depend on the layer"):
        LayerRSIGradCam(model, model.side).attribute(x, target=1, n_steps=2)


def test_scalar_output_per_example_takes_target_none() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    one_score = LayerRSIGradCam(lambda inp: model(inp)[:, 2], model.block3)
    by_column = LayerRSIGradCam(model, model.block3)
    torch.testing.assert_close(
        one_score.attribute(x, n_steps=3, internal_batch_size=3),
        by_column.attribute(x, target=2, n_steps=3),
    )

