"""LayerGradCamPlusPlus against pytorch-grad-cam, a per-example loop and the paper's
higher-derivative form, plus its properties."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from captum_regularized.attr import LayerGradCamPlusPlus, vit_tokens_to_map
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


def split_net() -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """``model = head(features(x))``, ``features`` ending at the explained layer (8 channels)."""
    features = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2)
    )
    head = nn.Sequential(
        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 5),
    )
    return nn.Sequential(*features, *head).eval(), features.eval(), head.eval()


def reference_grad_cam_plus_plus(
    model: Callable[..., torch.Tensor],
    layer: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: list[int],
    eps: float = 0.0,
    reshape: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    extra_args: tuple = (),
    use_input: bool = False,
) -> torch.Tensor:
    """The closed form written out: one example and one channel at a time, no final ReLU."""
    maps = []
    for index, klass in enumerate(target):
        with captured_layer(layer, use_input) as captured:
            point = tuple(x[index : index + 1].clone().requires_grad_() for x in inputs)
            args = tuple(a[index : index + 1] if torch.is_tensor(a) and a.dim() else a
                         for a in extra_args)
            score = model(*point, *args)[0, klass]
        (grad,) = torch.autograd.grad(score, captured["a"])
        act, grad = reshape(captured["a"].detach())[0], reshape(grad)[0]
        cam = torch.zeros(act.shape[1:], dtype=torch.float64)
        for channel in range(act.shape[0]):
            a, g = act[channel].double(), grad[channel].double()
            total = a.sum()
            weight = 0.0
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    gij = g[i, j]
                    denominator = 2 * gij**2 + total * gij**3 + eps
                    alpha = gij**2 / denominator if denominator != 0 else 0.0
                    weight = weight + alpha * max(float(gij), 0.0)
            cam += weight * a
        maps.append(cam[None].float())
    return torch.stack(maps)


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "reference map is all zero: the comparison would be vacuous"
    torch.testing.assert_close(actual, expected.to(actual), rtol=rtol, atol=rtol * scale)


def tiny_vit() -> torchvision.models.VisionTransformer:
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    ).eval()
    with torch.no_grad():  # torchvision starts the head at zero, which makes every gradient zero
        nn.init.normal_(model.heads.head.weight, std=0.5)
        nn.init.normal_(model.class_token, std=0.5)
    return model


# --- agreement with pytorch-grad-cam, the loop and the paper ------------------------------


def test_matches_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, _, _ = split_net()
    layer = model[2]
    x = torch.rand(4, 3, 16, 16)
    classes = [0, 3, 1, 4]
    targets = [ClassifierOutputTarget(c) for c in classes]
    ours = LayerGradCamPlusPlus(model, layer).attribute(x, target=classes, eps=1e-6)
    signed = LayerGradCamPlusPlus(model, layer).attribute(
        x, target=classes, eps=1e-6, relu_attributions=False
    )
    with pgc.GradCAMPlusPlus(model, [layer]) as cam:
        theirs = cam(x, targets)  # min-max scaled, resized, scaled again (one layer)
        outputs = cam.activations_and_grads(x)
        sum(t(o) for t, o in zip(targets, outputs)).backward()
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, layer, targets, activations, gradients)
    assert float(np.abs(raw).max()) > 0
    np.testing.assert_allclose(signed[:, 0].numpy(), raw, rtol=1e-5, atol=1e-7)
    ours_scaled = scale_cam_image(scale_cam_image(ours[:, 0].numpy(), (16, 16)))
    np.testing.assert_allclose(ours_scaled, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_matches_per_example_loop(eps: float, device: torch.device) -> None:
    model = small_cnn(device)
    x = torch.rand(3, 3, 16, 16, device=device)
    target = [0, 2, 3]
    with untouched(model, x):
        ours = LayerGradCamPlusPlus(model, model.block3).attribute(
            x, target=torch.tensor(target, device=device), relu_attributions=False, eps=eps
        )
    expected = reference_grad_cam_plus_plus(model, model.block3, (x,), target, eps)
    assert ours.shape == (3, 1, 4, 4) and ours.device == x.device
    assert_maps_close(ours, expected)


def test_closed_form_is_the_papers_alpha_from_higher_derivatives() -> None:
    """Eq. 10 of the paper with ``Y = exp(S)``: the second and third derivatives of ``Y``
    by each activation unit, taken by autograd, give the same map times ``exp(S)``.

    The head after the layer is a ReLU and a linear layer (every unit its own weight):
    piecewise linear as a ReLU network is, and quick to differentiate three times.
    """
    features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 1))
    head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5))
    model = nn.Sequential(*features, *head).eval()
    x = torch.rand(2, 3, 3, 3)
    classes = [1, 4]
    ours = LayerGradCamPlusPlus(model, model[2]).attribute(
        x, target=classes, relu_attributions=False
    )
    for index, klass in enumerate(classes):
        with torch.no_grad():
            act = features(x[index : index + 1])
        derivatives = torch.zeros(3, *act.shape[1:])
        for unit in np.ndindex(*act.shape[1:]):
            step = torch.zeros((), requires_grad=True)
            bump = torch.zeros_like(act)
            bump[(0, *unit)] = 1.0
            value = torch.exp(head(act + step * bump)[0, klass])
            for order in range(3):
                (value,) = torch.autograd.grad(value, step, create_graph=order < 2)
                derivatives[(order, *unit)] = value.detach()
        first, second, third = derivatives
        totals = act[0].sum(dim=(1, 2), keepdim=True)
        denominators = 2 * second + totals * third
        alpha = torch.where(denominators != 0, second / denominators, torch.zeros_like(second))
        weights = (alpha * torch.relu(first)).sum(dim=(1, 2), keepdim=True)
        paper = (weights * act[0]).sum(dim=0, keepdim=True)
        exp_score = torch.exp(model(x[index : index + 1])[0, klass]).detach()
        assert_maps_close(ours[index] * exp_score, paper)


def test_vision_transformer_through_reshape_transform() -> None:
    model = tiny_vit()
    layer = model.encoder.layers[-1].ln_1
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):
        ours = LayerGradCamPlusPlus(model, layer).attribute(
            x, target=[0, 2], reshape_transform=vit_tokens_to_map, relu_attributions=False
        )
    expected = reference_grad_cam_plus_plus(model, layer, (x,), [0, 2], reshape=vit_tokens_to_map)
    assert ours.shape == (2, 1, 4, 4)
    assert_maps_close(ours, expected)


class TwoInputNet(nn.Module):
    """Two image inputs, a per-example scale and a scalar shift as extra arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, shift: float
    ) -> torch.Tensor:
        hidden = torch.relu(self.conv_a(a) + self.conv_b(b))
        hidden = torch.relu(self.mix(hidden))
        return self.head(hidden.mean(dim=(2, 3))) * scale[:, None] + shift


def test_tuple_inputs_additional_args_and_layer_input() -> None:
    model = TwoInputNet().eval()
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    scale = torch.tensor([1.0, 2.0])
    with untouched(model, a, b, scale):
        ours = LayerGradCamPlusPlus(model, model.mix).attribute(
            (a, b), target=[2, 1], additional_forward_args=(scale, 0.5),
            relu_attributions=False,
        )
        at_input = LayerGradCamPlusPlus(model, model.mix).attribute(
            (a, b), [2, 1], (scale, 0.5), True, False
        )
    expected = reference_grad_cam_plus_plus(
        model, model.mix, (a, b), [2, 1], extra_args=(scale, 0.5)
    )
    assert_maps_close(ours, expected)
    expected_input = reference_grad_cam_plus_plus(
        model, model.mix, (a, b), [2, 1], extra_args=(scale, 0.5), use_input=True
    )
    assert at_input.shape == (2, 1, 8, 8)
    assert_maps_close(at_input, expected_input)


# --- properties -------------------------------------------------------------------------


def test_shapes_channels_and_the_final_relu() -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16)
    cam = LayerGradCamPlusPlus(model, model.block3[0])  # a convolution: signed activations
    summed = cam.attribute(x, target=1, relu_attributions=False)
    channels = cam.attribute(x, target=1, relu_attributions=False, attr_dim_summation=False)
    assert summed.shape == (3, 1, 4, 4) and channels.shape == (3, 16, 4, 4)
    torch.testing.assert_close(channels.sum(dim=1, keepdim=True), summed)
    assert (summed < 0).any() and (summed > 0).any()
    torch.testing.assert_close(cam.attribute(x, target=1), summed.clamp(min=0))
    torch.testing.assert_close(
        cam.attribute(x, target=1, attr_dim_summation=False), channels.clamp(min=0)
    )
    reference = LayerGradCam(model, model.block3[0]).attribute(
        x, target=1, attr_dim_summation=False
    )
    assert reference.shape == channels.shape
    assert LayerAttribution.interpolate(summed, (16, 16)).shape == (3, 1, 16, 16)


def test_batch_of_one_is_the_batchs_row_and_targets_agree() -> None:
    model = small_cnn()
    x = torch.rand(4, 3, 16, 16)
    cam = LayerGradCamPlusPlus(model, model.block3)
    predicted = model(x).argmax(dim=1)
    whole = cam.attribute(x)  # target=None: the predicted class
    torch.testing.assert_close(whole, cam.attribute(x, target=predicted.tolist()))
    for row in range(4):
        alone = cam.attribute(x[row : row + 1], target=int(predicted[row]))
        torch.testing.assert_close(alone[0], whole[row], rtol=1e-4, atol=1e-6)
    callables = [lambda out, k=int(k): out[k] for k in predicted]
    torch.testing.assert_close(cam.attribute(x, target=callables), whole)
    torch.testing.assert_close(
        cam.attribute(x, target=lambda out: out[:, 2]), cam.attribute(x, target=2)
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_left_as_found(mode: str) -> None:
    model = small_cnn().train(mode == "train")
    model.block3[0].weight.requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x):  # hooks, modes, flags, BatchNorm statistics, the inputs
        LayerGradCamPlusPlus(model, model.block3).attribute(x, target=0)
    assert all(p.grad is None for p in model.parameters())
    with untouched(model, x), pytest.raises(ValueError, match="target"):
        LayerGradCamPlusPlus(model, model.block3).attribute(x, target=[0, 1, 2])


def test_autocast_gives_float32_maps_close_to_float32() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    cam = LayerGradCamPlusPlus(model, model.block3)
    reference = cam.attribute(x, target=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cam.attribute(x, target=1)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    cosine = nn.functional.cosine_similarity(reference.flatten(1), low.flatten(1))
    assert (cosine > 0.9).all(), cosine


# --- bad input --------------------------------------------------------------------------


def test_layer_outside_the_model_is_rejected() -> None:
    model = small_cnn()
    with pytest.raises(ValueError, match=r"layer .* not a submodule"):
        LayerGradCamPlusPlus(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"layer must be an nn\.Module"):
        LayerGradCamPlusPlus(model, "block3")  # type: ignore[arg-type]


NAN_INPUT = torch.full((2, 3, 16, 16), float("nan"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(eps=-1.0), ValueError, "eps must be a finite number >= 0"),
        (dict(eps=float("inf")), ValueError, "eps"),
        (dict(eps="small"), TypeError, "eps must be a float"),
        (dict(target=7), ValueError, r"target.*\[0, 3\]"),
        (dict(target=[0, 1, 2]), ValueError, "target"),
        (dict(target=1.5), TypeError, "target"),
        (dict(reshape_transform="tokens"), TypeError, "reshape_transform must be callable"),
        (dict(grad_kwargs=[1]), TypeError, "grad_kwargs must be a dict"),
        (dict(inputs=NAN_INPUT), ValueError, r"inputs\[0\] contains NaN"),
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
        LayerGradCamPlusPlus(model, model.block3).attribute(x, **kwargs)


def test_layer_problems_are_clear_errors() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with untouched(model, x), pytest.raises(ValueError, match=r"\(batch, channels"):
        LayerGradCamPlusPlus(model, model.classifier).attribute(x, target=0)
    vit = tiny_vit()
    with untouched(vit, x), pytest.raises(ValueError, match="reshape_transform"):
        LayerGradCamPlusPlus(vit, vit.encoder.layers[-1].ln_1).attribute(x, target=0)
    shared = nn.Conv2d(2, 2, 1)
    twice = nn.Sequential(shared, shared, nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(ValueError, match="more than once"):
        LayerGradCamPlusPlus(twice, shared).attribute(torch.rand(2, 2, 4, 4), target=0)
    with untouched(model, x), pytest.raises(ValueError, match="keep the batch in dim 0"):
        LayerGradCamPlusPlus(lambda t: model(t)[:1], model.block3).attribute(x, target=0)
