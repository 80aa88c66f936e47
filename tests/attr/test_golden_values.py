"""Golden values: maps of tiny models whose gradients are known in closed form.

RSI-Grad-CAM on a one-convolution network, and the four signed maps on a two-class
linear model. The expected values are worked out by hand below (formulas or literal
numbers), in float64, without calling into the library's internals.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_regularized.attr import (
    ActiveSaliency,
    InactiveSaliency,
    LayerRSIGradCam,
    NegativeSaliency,
    PositiveSaliency,
    signed_saliency_maps,
)

EXACT = {"rtol": 1e-12, "atol": 1e-12}

# ------------------------------------------------------------- RSI-Grad-CAM, one conv

CONV_WEIGHTS = (1.0, -0.5)
"""The 1x1 convolution's weights (two input channels, one output channel, no bias)."""

# (B=2, C=2, 2, 3): the layer's activation has both signs in each example; its spatial
# mean s is positive for the first example and negative for the second.
X = torch.tensor(
    [
        [[[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], [[0.5, 1.0, -1.0], [-0.5, 2.0, 0.0]]],
        [[[-1.0, 0.5, -2.0], [0.25, -3.0, 1.0]], [[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]]],
    ],
    dtype=torch.float64,
)


class OneConvNet(nn.Module):
    """``x -> A = conv1x1(x) -> s = mean_ij A -> (k_0 s, k_1 s)`` with ``k = (1, -2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=1, bias=False).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(CONV_WEIGHTS).view(1, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv(x).mean(dim=(1, 2, 3))
        return torch.stack([s, -2.0 * s], dim=1)


SLOPES = (1.0, -2.0)
"""``k_c``: the model's score of class ``c`` is ``k_c s``."""


def activation(x: torch.Tensor) -> torch.Tensor:
    """``A = w_0 x_0 + w_1 x_1``, shape ``(B, 1, h, w)``, written out by hand."""
    w0, w1 = CONV_WEIGHTS
    return (w0 * x[:, 0] + w1 * x[:, 1])[:, None]


def rsi_by_hand(a: torch.Tensor, a0: torch.Tensor, k: float, power: int, m: int) -> torch.Tensor:
    r"""Trapezoidal RSI of the score ``(k s)^power``, ``power`` 1 or 3, in closed form.

    With ``N`` spatial units, ``s = mean A`` and the path ``A_l = A_0 + (l/m)(A - A_0)``:

    * ``power = 1``: ``G = k / N`` is constant, so the trapezoid is exact,
      ``RSI = k (A - A_0) / N``;
    * ``power = 3`` with ``A_0 = 0``: ``G_l = 3 k^3 s_l^2 / N``, ``s_l = (l/m) s``, and
      ``sum_{l=1}^m ((l-1)^2 + l^2) / 2 = m^3/3 + m/6``, so
      ``RSI = k^3 s^2 A / N (1 + 1 / (2 m^2))``: the trapezoid overshoots the integral
      ``k^3 s^2 A / N`` by ``1 / (2 m^2)``.
    """
    n = a.shape[2] * a.shape[3]
    s = a.mean(dim=(1, 2, 3), keepdim=True)
    if power == 1:
        return k * (a - a0) / n
    assert power == 3 and not a0.any()
    return k**3 * s**2 * a / n * (1 + 1 / (2 * m**2))


def cam_by_hand(rsi: torch.Tensor, a: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM on the RSI: ``w = mean_ij RSI``, map ``relu(w A)`` (one channel)."""
    cam = rsi.mean(dim=(2, 3), keepdim=True) * a
    return torch.relu(cam) if relu else cam


def cube(out: torch.Tensor) -> torch.Tensor:
    return out**3


@pytest.mark.parametrize("n_steps", [1, 2, 5, 50])
@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("cubed", [False, True], ids=["linear score", "cubed score"])
def test_rsi_grad_cam_on_one_conv_matches_the_closed_form(n_steps, target, cubed):
    model = OneConvNet()
    cam = LayerRSIGradCam(model, model.conv)
    maps, delta = cam.attribute(
        X, target=target, n_steps=n_steps, output_transform=cube if cubed else None,
        return_convergence_delta=True,
    )
    a = activation(X)
    rsi = rsi_by_hand(a, torch.zeros_like(a), SLOPES[target], 3 if cubed else 1, n_steps)
    torch.testing.assert_close(maps, cam_by_hand(rsi, a), **EXACT)
    assert (maps.flatten(1) > 0).any(1).all()  # every example's map has a lit unit
    # completeness gap: sum RSI - (y(x) - y(0)) = k^3 s^3 / (2 m^2) for the cube, 0 else
    s = a.mean(dim=(1, 2, 3))
    k = SLOPES[target]
    expected_delta = k**3 * s**3 / (2 * n_steps**2) if cubed else torch.zeros_like(s)
    torch.testing.assert_close(delta, expected_delta, **EXACT)
    assert maps.dtype == delta.dtype == torch.float64
    assert cam.last_n_steps.tolist() == [n_steps, n_steps]


def test_rsi_grad_cam_closed_form_without_the_final_relu_and_per_example_targets():
    model = OneConvNet()
    maps = LayerRSIGradCam(model, model.conv).attribute(
        X, target=[1, 0], n_steps=3, output_transform=cube, relu_attributions=False
    )
    a = activation(X)
    zero = torch.zeros_like(a)
    expected = torch.cat([
        cam_by_hand(rsi_by_hand(a, zero, SLOPES[1], 3, 3), a, relu=False)[:1],
        cam_by_hand(rsi_by_hand(a, zero, SLOPES[0], 3, 3), a, relu=False)[1:],
    ])
    torch.testing.assert_close(maps, expected, **EXACT)
    assert (maps < 0).any() and (maps > 0).any()  # the signs survive without the ReLU


def test_rsi_grad_cam_closed_form_from_a_constant_baseline():
    model = OneConvNet()
    baseline = 0.25
    maps, delta = LayerRSIGradCam(model, model.conv).attribute(
        X, target=1, baselines=baseline, n_steps=4, return_convergence_delta=True
    )
    a = activation(X)
    a0 = torch.full_like(a, (CONV_WEIGHTS[0] + CONV_WEIGHTS[1]) * baseline)
    torch.testing.assert_close(maps, cam_by_hand(rsi_by_hand(a, a0, SLOPES[1], 1, 4), a), **EXACT)
    torch.testing.assert_close(delta, torch.zeros(2, dtype=torch.float64), **EXACT)


def test_rsi_grad_cam_variants_in_closed_form():
    model = OneConvNet()
    cam = LayerRSIGradCam(model, model.conv)
    a = activation(X)
    zero = torch.zeros_like(a)
    # relu_gradients: the gradient of -2 s is -2/N < 0 everywhere, so RSI and map vanish
    maps = cam.attribute(X, target=1, n_steps=4, variant="relu_gradients")
    torch.testing.assert_close(maps, torch.zeros_like(a), **EXACT)
    # unit_selection keeps units with A > 0, RSI > 0 and A - A_0 > 0; for the cubed score
    # of class 0 (A_0 = 0) RSI = c A with c > 0, so exactly the units with A > 0 remain
    maps = cam.attribute(X, target=0, n_steps=4, output_transform=cube, variant="unit_selection")
    rsi = rsi_by_hand(a, zero, SLOPES[0], 3, 4)
    torch.testing.assert_close(maps, cam_by_hand(rsi * (a > 0), a), **EXACT)
    assert not torch.equal(maps, cam_by_hand(rsi, a))  # the selection changed the weights


# ------------------------------------------------------------- signed maps, f(x) = W x + b

W = torch.tensor(
    [
        [2.0, -1.0, 0.5, -3.0, 0.0, 1.0],
        [-1.0, -1.5, 2.0, 1.0, 0.0, -2.0],
    ],
    dtype=torch.float64,
)
"""Feature 4 is a tie (0 = 0): strictly above / below fails for both classes there."""

SHAPE = (2, 1, 3)
"""Each example is ``(C=2, 1, 3)``; ``Flatten`` takes channel 0's three values first."""

# dS_t/dx = W[t] for every input; the maps of target t, worked out from W by hand.
BY_HAND = {
    0: {
        "gradient": [2.0, -1.0, 0.5, -3.0, 0.0, 1.0],
        "positive": [2.0, 0.0, 0.5, 0.0, 0.0, 1.0],
        "negative": [0.0, 1.0, 0.0, 3.0, 0.0, 0.0],
        "active": [2.0, -1.0, 0.0, 0.0, 0.0, 1.0],  # W0 > W1 at features 0, 1, 5
        "inactive": [0.0, 0.0, 0.5, -3.0, 0.0, 0.0],  # W0 < W1 at features 2, 3
    },
    1: {
        "gradient": [-1.0, -1.5, 2.0, 1.0, 0.0, -2.0],
        "positive": [0.0, 0.0, 2.0, 1.0, 0.0, 0.0],
        "negative": [1.0, 1.5, 0.0, 0.0, 0.0, 2.0],
        "active": [0.0, 0.0, 2.0, 1.0, 0.0, 0.0],  # W1 > W0 at features 2, 3
        "inactive": [-1.0, -1.5, 0.0, 0.0, 0.0, -2.0],  # W1 < W0 at features 0, 1, 5
    },
}
TARGETS = [0, 1, 1]


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(torch.tensor([0.3, -0.7]))
    return model.eval()


def inputs() -> torch.Tensor:
    # any values: the maps of a linear model do not depend on them
    return torch.linspace(-2.0, 3.0, 3 * 6, dtype=torch.float64).view(3, *SHAPE)


def expected(name: str, abs: bool = False) -> torch.Tensor:
    rows = torch.tensor([BY_HAND[t][name] for t in TARGETS], dtype=torch.float64)
    return (rows.abs() if abs else rows).view(len(TARGETS), *SHAPE)


@pytest.mark.parametrize(
    ("cls", "name"), [(PositiveSaliency, "positive"), (NegativeSaliency, "negative")]
)
def test_signed_parts_of_a_linear_model_by_hand(cls, name):
    maps = cls(linear_model()).attribute(inputs(), target=TARGETS)
    torch.testing.assert_close(maps, expected(name), **EXACT)


@pytest.mark.parametrize(
    ("cls", "name"), [(ActiveSaliency, "active"), (InactiveSaliency, "inactive")]
)
@pytest.mark.parametrize("abs", [True, False])
def test_attitude_maps_of_a_linear_model_by_hand(cls, name, abs):
    maps = cls(linear_model()).attribute(inputs(), target=TARGETS, abs=abs)
    torch.testing.assert_close(maps, expected(name, abs), **EXACT)


def test_all_maps_at_once_of_a_linear_model_by_hand():
    for abs in (True, False):
        maps = signed_saliency_maps(linear_model(), inputs(), target=TARGETS, abs=abs)
        assert sorted(maps) == ["active", "gradient", "inactive", "negative", "positive"]
        for name, value in maps.items():
            kept_sign = name in ("gradient", "positive", "negative")
            torch.testing.assert_close(value, expected(name, abs and not kept_sign), **EXACT)


def test_linear_model_maps_on_a_tuple_of_inputs_keep_each_input_shape():
    first, second = W[:, :4], W[:, 4:]

    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.flatten(1) @ first.T + b @ second.T

    x = inputs().flatten(1)
    maps = ActiveSaliency(forward).attribute((x[:, :4].view(3, 2, 2), x[:, 4:]), target=TARGETS)
    full = expected("active", abs=True).flatten(1)
    torch.testing.assert_close(maps[0], full[:, :4].view(3, 2, 2), **EXACT)
    torch.testing.assert_close(maps[1], full[:, 4:], **EXACT)
