"""GuidedBackprop and GuidedGradCam: Captum's answers on nn.ReLU models, correct elsewhere.

On models built from ``nn.ReLU`` modules both classes must give exactly what
``captum.attr.GuidedBackprop`` / ``captum.attr.GuidedGradCam`` give (every target form,
tuple inputs, additional forward args, layer input or output, interpolation modes).
Where Captum's module hooks miss the activations (functional ReLUs) they must give
the module twin's answer. The model is left as found and bad arguments are named.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from torch import nn
from torch.utils.checkpoint import checkpoint

from captum_regularized import attr
from captum_regularized._internal.guided_relu import guided_and_plain_gradients
from captum_regularized.models import SimpleCNN
from tests.guided_nets import ModuleNet, twin_nets
from tests.model_checks import assert_no_hooks, untouched


def captum_guided(model, inputs, target=None, args=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CaptumGuidedBackprop(model).attribute(inputs, target=target,
                                                     additional_forward_args=args)


def captum_guided_grad_cam(model, layer, inputs, target=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CaptumGuidedGradCam(model, layer).attribute(inputs, target=target, **kwargs)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class TwoInputs(nn.Module):
    """Two images of different sizes and a per-example scale as an extra argument."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ModuleNet()

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.net(a + F.interpolate(b, size=a.shape[2:]) * scale[:, None, None, None])


# ------------------------------------------------------------------ GuidedBackprop


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_guided_backprop_equals_captum_on_a_batchnorm_cnn(device, train):
    model = SimpleCNN(5, width=4).to(device).train(train)
    x = torch.rand(3, 3, 16, 16, device=device)
    target = torch.tensor([1, 0, 4], device=device)
    before = _state(model)
    with untouched(model, x):
        ours = attr.GuidedBackprop(model).attribute(x, target=target)
    model.load_state_dict(before)
    torch.testing.assert_close(ours, captum_guided(model, x.clone(), target))


def test_guided_backprop_equals_captum_on_resnet18_with_inplace_relus():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    with untouched(model, x):
        ours = attr.GuidedBackprop(model).attribute(x, target=[3, 7])
    torch.testing.assert_close(ours, captum_guided(model, x.clone(), [3, 7]))


@pytest.mark.parametrize("target", [None, 2, [1, 3]], ids=["None", "int", "list"])
def test_guided_backprop_equals_captum_for_tuple_inputs_and_extra_args(target):
    model = TwoInputs().eval()
    a, b, scale = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4), torch.tensor([0.5, 2.0])
    ours = attr.GuidedBackprop(model).attribute((a, b), target=target,
                                                additional_forward_args=(scale,))
    if target is None:  # Captum refuses None on a multi-class output; ours predicts
        target = model(a, b, scale).argmax(1)
    expected = captum_guided(model, (a.clone(), b.clone()), target, (scale,))
    assert isinstance(ours, tuple) and len(ours) == 2
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)


def test_functional_relus_give_the_module_twins_answer_where_captum_gives_the_plain_one():
    modules, functional = twin_nets()
    x, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    ours = attr.GuidedBackprop(functional).attribute(x, target=target)
    torch.testing.assert_close(ours, attr.GuidedBackprop(modules).attribute(x, target=target))
    torch.testing.assert_close(ours, captum_guided(modules, x.clone(), target))
    _, plain, _ = guided_and_plain_gradients(functional, x, target)
    torch.testing.assert_close(captum_guided(functional, x.clone(), target), plain)
    assert not torch.allclose(ours, plain)


def test_target_none_is_the_predicted_class():
    model = ModuleNet().eval()
    x = torch.randn(3, 3, 8, 8)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(attr.GuidedBackprop(model).attribute(x),
                               attr.GuidedBackprop(model).attribute(x, target=predicted))


def test_a_function_around_the_model_is_accepted():
    model = ModuleNet().eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(attr.GuidedBackprop(lambda t: model(t)).attribute(x, target=1),
                               attr.GuidedBackprop(model).attribute(x, target=1))


def test_the_inputs_are_not_modified_and_no_gradient_is_written():
    model = SimpleCNN(3, width=4).eval()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with untouched(model, x):
        maps = attr.GuidedBackprop(model).attribute(x, target=1)
    assert x.grad is None and not maps.requires_grad
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ GuidedGradCam


@pytest.mark.parametrize("to_input", [False, True], ids=["layer_output", "layer_input"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam_equals_captum_on_a_batchnorm_cnn(device, to_input, mode):
    model = SimpleCNN(5, width=4).to(device).eval()
    x = torch.rand(3, 3, 16, 16, device=device)
    target = torch.tensor([1, 0, 4], device=device)
    kwargs = {"interpolate_mode": mode, "attribute_to_layer_input": to_input}
    with untouched(model, x):
        ours = attr.GuidedGradCam(model, model.block2).attribute(x, target=target, **kwargs)
    expected = captum_guided_grad_cam(model, model.block2, x.clone(), target, **kwargs)
    torch.testing.assert_close(ours, expected)
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("to_input", [False, True], ids=["layer_output", "layer_input"])
@pytest.mark.parametrize("layer", ["layer3", "layer4.1", "layer3.0.conv2"])
def test_guided_grad_cam_equals_captum_on_resnet18(layer, to_input):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    module = model.get_submodule(layer)
    ours = attr.GuidedGradCam(model, module).attribute(
        x, target=[3, 7], attribute_to_layer_input=to_input
    )
    expected = captum_guided_grad_cam(model, module, x.clone(), [3, 7],
                                      attribute_to_layer_input=to_input)
    torch.testing.assert_close(ours, expected)


def test_guided_grad_cam_equals_captum_for_tuple_inputs_of_two_sizes():
    model = TwoInputs().eval()
    a, b, scale = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4), torch.tensor([0.5, 2.0])
    layer = model.net.conv2
    ours = attr.GuidedGradCam(model, layer).attribute((a, b), target=[0, 2],
                                                      additional_forward_args=(scale,))
    expected = captum_guided_grad_cam(model, layer, (a.clone(), b.clone()), [0, 2],
                                      additional_forward_args=(scale,))
    assert ours[1].shape == b.shape
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)


def test_guided_grad_cam_on_functional_relus_is_the_module_twins():
    modules, functional = twin_nets()
    x, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    ours = attr.GuidedGradCam(functional, functional.conv2).attribute(x, target=target)
    torch.testing.assert_close(ours, captum_guided_grad_cam(modules, modules.conv2, x, target))


def test_guided_grad_cam_is_guided_backprop_times_the_hand_made_cam():
    """Independent of Captum: the Grad-CAM half written out with a hook and autograd."""
    model = SimpleCNN(4, width=4).eval()
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([2, 3])
    kept = {}
    handle = model.block2.register_forward_hook(lambda m, a, out: kept.update(act=out))
    xr = x.clone().requires_grad_()
    score = model(xr).gather(1, target[:, None]).sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, kept["act"])
    cam = F.relu((grad.mean((2, 3), keepdim=True) * kept["act"]).sum(1, keepdim=True))
    expected = attr.GuidedBackprop(model).attribute(x, target=target) * F.interpolate(
        cam.detach(), size=(16, 16), mode="bilinear"
    )
    got = attr.GuidedGradCam(model, model.block2).attribute(x, target=target,
                                                            interpolate_mode="bilinear")
    torch.testing.assert_close(got, expected)


def test_guided_grad_cam_takes_a_reshape_transform_for_vit_tokens():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.2)  # torchvision starts the head at zero
    layer = vit.encoder.layers[-1].ln_1
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([1, 4])
    kept = {}
    handle = layer.register_forward_hook(lambda m, a, out: kept.update(act=out))
    score = vit(x.clone().requires_grad_()).gather(1, target[:, None]).sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, kept["act"])
    acts, grads = attr.vit_tokens_to_map(kept["act"]), attr.vit_tokens_to_map(grad)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True)).detach()
    expected = attr.GuidedBackprop(vit).attribute(x, target=target) * F.interpolate(
        cam, size=(32, 32)
    )
    with untouched(vit, x):
        got = attr.GuidedGradCam(vit, layer).attribute(
            x, target=target, reshape_transform=attr.vit_tokens_to_map
        )
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="reshape_transform"):
        attr.GuidedGradCam(vit, layer).attribute(x, target=target)


def test_non_reentrant_checkpointing_around_the_layer_is_not_a_second_call():
    class Checkpointed(ModuleNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relus[0](self.conv1(x))
            h = checkpoint(lambda t: self.relus[1](self.conv2(t)), h, use_reentrant=False)
            h = self.relus[2](self.conv3(h) + h)
            return self.fc(self.relus[3](h.mean((2, 3))))

    plain, checkpointed = ModuleNet(), Checkpointed()
    checkpointed.load_state_dict(plain.state_dict())
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([0, 3])
    got = attr.GuidedGradCam(checkpointed, checkpointed.conv2).attribute(x, target=target)
    torch.testing.assert_close(
        got, attr.GuidedGradCam(plain, plain.conv2).attribute(x, target=target)
    )


def test_train_mode_batchnorm_statistics_are_kept():
    model = SimpleCNN(3, width=4).train()
    x = torch.rand(4, 3, 8, 8)
    with untouched(model, x):
        attr.GuidedBackprop(model).attribute(x, target=0)
        attr.GuidedGradCam(model, model.block3).attribute(x, target=0)
    assert all(m.training for m in model.modules())


# ------------------------------------------------------------------ errors


def test_a_layer_that_runs_twice_is_refused_where_captum_takes_the_last_call():
    model = torchvision.models.resnet18(num_classes=10).eval()
    relu = model.layer4[1].relu  # BasicBlock applies its one ReLU module twice
    with untouched(model), pytest.raises(ValueError, match="more than once"):
        attr.GuidedGradCam(model, relu).attribute(torch.rand(1, 3, 32, 32), target=0)


def test_layer_errors_are_named():
    model = ModuleNet()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"layer must be an nn\.Module"):
        attr.GuidedGradCam(model, "conv2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a submodule"):
        attr.GuidedGradCam(model, nn.Conv2d(6, 6, 3))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.extra = nn.Linear(6, 2), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(F.relu(x))

    unused = Unused()
    with untouched(unused), pytest.raises(ValueError, match="did not run"):
        attr.GuidedGradCam(unused, unused.extra).attribute(torch.randn(2, 6), target=0)

    class TupleLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.split = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.split(x)
            return h[:, :3], h[:, 3:]

    class UsesTuple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.fc = TupleLayer(), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.layer(x)
            return self.fc(F.relu(a + b).mean((2, 3)))

    tuple_model = UsesTuple()
    with untouched(tuple_model), pytest.raises(TypeError, match="one tensor"):
        attr.GuidedGradCam(tuple_model, tuple_model.layer).attribute(x, target=0)
    with untouched(model), pytest.raises(ValueError, match="interpolate_mode"):
        attr.GuidedGradCam(model, model.conv2).attribute(x, target=0, interpolate_mode="cubic")
    with pytest.raises(TypeError, match="reshape_transform"):
        attr.GuidedGradCam(model, model.conv2).attribute(x, target=0, reshape_transform=3)


def test_a_map_that_cannot_be_interpolated_to_the_input_is_named():
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with untouched(mlp), pytest.raises(ValueError, match=r"inputs\[0\]"):
        attr.GuidedGradCam(mlp, mlp[0]).attribute(torch.randn(2, 6), target=0)


@pytest.mark.parametrize("cls", ["GuidedBackprop", "GuidedGradCam"])
def test_model_errors_are_named(cls):
    model = ModuleNet()

    def make(m, **kwargs):
        if cls == "GuidedBackprop":
            return attr.GuidedBackprop(m, **kwargs)
        return attr.GuidedGradCam(m, model.conv2, **kwargs)

    with pytest.raises(ValueError, match=r"rule must be one of \['gated', 'ungated'\]"):
        make(model, rule="deconvnet")
    with pytest.raises(TypeError, match="rule"):
        make(model, rule=1)
    with pytest.raises(TypeError, match="_orig_mod"):
        make(torch.compile(model))
    scripted = ModuleNet()
    scripted.relus[2] = torch.jit.script(scripted.relus[2])
    with pytest.raises(ValueError, match=r"model\.relus\.2 is a TorchScript module"):
        make(scripted)
    with pytest.raises(TypeError, match="model must be callable"):
        make(3)


def test_an_exception_in_the_forward_pass_leaves_no_hook_and_no_mode():
    class Broken(ModuleNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv2(self.relus[0](self.conv1(x)))
            raise RuntimeError("broken forward")

    model = Broken()
    for method in (attr.GuidedBackprop(model), attr.GuidedGradCam(model, model.conv2)):
        with untouched(model), pytest.raises(RuntimeError, match="broken forward"):
            method.attribute(torch.randn(2, 3, 8, 8), target=0)
        assert_no_hooks(model)
    assert not torch.overrides._get_current_function_mode_stack()
