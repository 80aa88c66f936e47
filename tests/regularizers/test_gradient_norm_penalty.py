"""GradientNormPenalty: R*(grad_x loss) by double back-propagation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.models import SimpleCNN, train_classifier, with_cross_entropy
from captum_regularized.regularizers import GradientNormPenalty
from tests.model_checks import assert_no_hooks, untouched

SETTINGS = {
    "l1": {"norm": "l1", "epsilon": 0.05},
    "elastic_net": {"norm": "elastic_net", "epsilon": 0.02, "epsilon2": 0.05},
    "group": {"norm": "group", "epsilon": 0.1, "group_size": 4},
    "gaze": {"norm": "gaze", "epsilon": 0.1},
}


def _batch(n: int = 3, size: int = 10, dtype=torch.float32):
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(n, 3, size, size, generator=gen).to(dtype)
    labels = torch.randint(0, 3, (n,), generator=gen)
    mask = (torch.rand(n, 1, size, size, generator=gen) > 0.5).to(dtype)
    return images, labels, mask


def _reference_penalty(model, images, labels, mask, settings) -> torch.Tensor:
    """One example at a time: its own loss gradient, then the table's R*(g), averaged."""
    values = []
    for i in range(images.shape[0]):
        x = images[i:i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), labels[i:i + 1])
        (g,) = torch.autograd.grad(loss, x)
        g = g[0]
        eps = settings["epsilon"]
        if settings["norm"] == "l1":
            values.append(eps * g.abs().sum())
        elif settings["norm"] == "elastic_net":
            values.append(eps * g.abs().sum() + settings["epsilon2"] * g.pow(2).sum())
        elif settings["norm"] == "group":
            s = settings["group_size"]
            total = 0.0
            for c in range(g.shape[0]):
                for r in range(0, g.shape[1], s):
                    for q in range(0, g.shape[2], s):
                        total = total + g[c, r:r + s, q:q + s].pow(2).sum().sqrt()
            values.append(eps * total)
        else:
            values.append(eps * ((1 - 2 * mask[i]) * g.pow(2)).sum() / g.pow(2).sum().sqrt())
    return torch.stack(values).mean()


@pytest.mark.parametrize("norm", list(SETTINGS))
def test_penalty_matches_a_per_example_reference(norm, device):
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=3, width=4).to(device).eval()
    images, labels, mask = (t.to(device) for t in _batch())
    pen = GradientNormPenalty(model, **SETTINGS[norm])
    with untouched(model, images, labels):
        logits, penalty = pen(images, labels, mask=mask if norm == "gaze" else None)
    expected = _reference_penalty(model, images, labels, mask, SETTINGS[norm])
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(logits, model(images))
    assert penalty.requires_grad and penalty.dim() == 0


@pytest.mark.parametrize("norm", ["l1", "elastic_net", "group", "gaze"])
def test_penalty_gradient_in_the_parameters_passes_gradcheck(norm):
    """Double back-propagation against finite differences on a smooth float64 model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 3)).double()
    images, labels, mask = _batch(n=2, size=5, dtype=torch.float64)
    images = images[:, :2]
    settings = dict(SETTINGS[norm], **({"group_size": 2} if norm == "group" else {}))
    pen = GradientNormPenalty(model, **settings)
    weight = model[0].weight

    def penalty_of(w: torch.Tensor) -> torch.Tensor:
        original = model[0].weight
        try:
            del model[0].weight
            model[0].weight = w
            return pen(images, labels, mask=mask if norm == "gaze" else None)[1]
        finally:
            model[0].weight = original

    assert torch.autograd.gradcheck(penalty_of, (weight.detach().clone().requires_grad_(),))


def test_training_mode_updates_batchnorm_like_one_plain_forward():
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=3, width=4).train()
    reference = copy.deepcopy(model)
    images, labels, _ = _batch()
    logits, penalty = GradientNormPenalty(model, norm="l1", epsilon=0.1)(images, labels)
    torch.testing.assert_close(logits, reference(images))
    for (name, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(ours, theirs, msg=f"buffer {name}")
    (F.cross_entropy(logits, labels) + penalty).backward()
    for param in model.parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all())
    assert model.training
    assert_no_hooks(model)


@pytest.mark.parametrize("norm", list(SETTINGS))
def test_zero_gradient_gives_zero_penalty_and_finite_parameter_gradients(norm):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    nn.init.zeros_(model[1].weight)
    images, labels, mask = _batch(size=8)
    _, penalty = GradientNormPenalty(model, **dict(SETTINGS[norm], group_size=4))(
        images, labels, mask=mask if norm == "gaze" else None
    )
    assert float(penalty.detach()) == 0.0
    penalty.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_bad_arguments_and_calls():
    model = SimpleCNN(num_classes=3, width=4)
    images, labels, mask = _batch()
    with pytest.raises(ValueError, match="norm must be one of"):
        GradientNormPenalty(model, norm="linf")
    with pytest.raises(ValueError, match="epsilon must be"):
        GradientNormPenalty(model, epsilon=-0.1)
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        GradientNormPenalty("model")
    with untouched(model, images, labels):
        with pytest.raises(ValueError, match="needs a mask"):
            GradientNormPenalty(model, norm="gaze")(images, labels)
        with pytest.raises(ValueError, match="mask has shape"):
            GradientNormPenalty(model, norm="gaze")(images, labels, mask=mask[:2])
        with pytest.raises(ValueError, match="only used by norm='gaze'"):
            GradientNormPenalty(model)(images, labels, mask=mask)
        with pytest.raises(ValueError, match="image-shaped"):
            GradientNormPenalty(nn.Linear(4, 3), norm="group")(torch.rand(3, 4), labels)


def test_works_as_the_train_classifier_loss_hook():
    images, labels, _ = _batch(n=8)
    model = SimpleCNN(num_classes=3, width=4)
    pen = GradientNormPenalty(model, norm="group", epsilon=0.1, group_size=5)
    history = train_classifier(
        model, TensorDataset(images, labels), epochs=1, batch_size=4, loss=with_cross_entropy(pen),
        progress=False
    )
    assert history[0]["accuracy"] == history[0]["accuracy"]  # logits were reported
    assert history[0]["loss"] == history[0]["loss"]
