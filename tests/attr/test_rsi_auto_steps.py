"""LayerRSIGradCam with ``n_steps="auto"``: nested trapezoid refinement per example.

The reference for every count is the method's own fixed-step result (itself checked
against a one-pass-per-point loop in ``test_rsi_grad_cam.py``): the auto result of an
example that stopped at ``m`` must be the fixed ``n_steps=m`` result, ``m`` must be the
first of 4, 8, 16, ... whose fixed-step completeness gap meets the tolerance (or the
cap), and the model must run ``m + 1`` path points for it, not more (old points reused).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_regularized.attr import LayerRSIGradCam
from captum_regularized.models import SimpleCNN
from tests.attr.cnns import cnn_with_statistics
from tests.model_checks import untouched

VARIANTS = ["plain", "unit_selection", "relu_gradients"]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
    ),
]


class Wavy(nn.Module):
    """A score that depends on the input through ``layer`` only, smooth in it.

    Its curvature along the path grows with the per-example ``scale`` (an additional
    forward argument), so examples need different step counts: the trapezoid error of
    ``sin(s * A)`` falls like ``s**2 / m**2``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([1.0, -0.7]).view(2, 1, 1, 1))
            self.layer.bias.copy_(torch.tensor([0.3, 0.1]))

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        a = self.layer(x)
        s = scale.view(-1, 1, 1, 1)
        return torch.stack(
            (torch.sin(s * a).sum(dim=(1, 2, 3)), (torch.cos(s * a) * a).sum(dim=(1, 2, 3))),
            dim=1,
        )


def wavy_batch(device: str = "cpu") -> tuple[Wavy, torch.Tensor, torch.Tensor, list[int]]:
    torch.manual_seed(3)
    model = Wavy().double().to(device)
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64, device=device) + 0.5
    scale = torch.tensor([0.3, 6.0, 1.0, 12.0, 2.5], dtype=torch.float64, device=device)
    return model, x, scale, [0, 1, 1, 0, 1]


def small_cnn() -> SimpleCNN:
    torch.manual_seed(0)
    return cnn_with_statistics(dtype=torch.float64)


def fixed(cam: LayerRSIGradCam, x: torch.Tensor, i: int, n: int, **kwargs) -> tuple:
    """The fixed-step map of example ``i`` and its plain delta (a separate call)."""
    extra = kwargs.pop("extra", None)
    target = kwargs.pop("target")
    one = dict(
        target=target[i] if isinstance(target, list) else target,
        additional_forward_args=None if extra is None else (extra[i : i + 1],),
    )
    variant = kwargs.pop("variant", "plain")
    cam_map = cam.attribute(x[i : i + 1], n_steps=n, variant=variant, **one, **kwargs)
    _, delta = cam.attribute(
        x[i : i + 1], n_steps=n, return_convergence_delta=True, **one, **kwargs
    )
    return cam_map, delta


def check_against_fixed_counts(
    cam: LayerRSIGradCam,
    x: torch.Tensor,
    maps: torch.Tensor,
    deltas: torch.Tensor,
    used: torch.Tensor,
    tolerance: float,
    max_steps: int,
    **kwargs,
) -> None:
    """Each example's count is the first 4 * 2**j meeting the tolerance (or the cap),
    and its map and delta are the fixed-step ones at that count."""
    last = 4
    while 2 * last <= max_steps:
        last *= 2
    for i, m in enumerate(used.tolist()):
        rise = abs(float(rise_of(cam, x, i, **kwargs)))
        assert rise > 0, "f(x) = f(x') would make every tolerance unreachable"
        count = 4
        while True:
            fixed_map, fixed_delta = fixed(cam, x, i, count, **dict(kwargs))
            if abs(float(fixed_delta)) <= tolerance * rise or count == last:
                break
            count *= 2
        assert m == count, f"example {i} stopped at {m}, the first count meeting it is {count}"
        torch.testing.assert_close(maps[i : i + 1], fixed_map, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(deltas[i : i + 1], fixed_delta, rtol=1e-7, atol=1e-12)
        assert abs(float(deltas[i])) <= tolerance * rise or m == last


def rise_of(cam: LayerRSIGradCam, x: torch.Tensor, i: int, **kwargs) -> torch.Tensor:
    """``f(x) - f(x')`` of example ``i`` (zero baseline), straight from the model."""
    model = cam.forward_func
    target = kwargs.get("target")
    t = target[i] if isinstance(target, list) else target
    extra = kwargs.get("extra")
    args = () if extra is None else (extra[i : i + 1],)
    with torch.no_grad():
        out_x = model(x[i : i + 1], *args)
        out_b = model(torch.zeros_like(x[i : i + 1]), *args)
    if kwargs.get("output_transform") == "softmax":
        out_x, out_b = out_x.softmax(dim=1), out_b.softmax(dim=1)
    return out_x[0, t] - out_b[0, t]


@pytest.mark.parametrize("variant", VARIANTS)
def test_auto_stops_at_the_first_fixed_count_meeting_the_tolerance(variant: str) -> None:
    model, x, scale, target = wavy_batch()
    cam = LayerRSIGradCam(model, model.layer)
    tolerance, max_steps = 1e-3, 128
    maps = cam.attribute(
        x, target=target, additional_forward_args=(scale,), n_steps="auto",
        tolerance=tolerance, max_steps=max_steps, variant=variant, relu_attributions=False,
    )
    used = cam.last_n_steps
    assert used is not None and used.dtype == torch.long and used.shape == (5,)
    assert len(set(used.tolist())) >= 3, f"examples should need different counts: {used}"
    _, deltas = cam.attribute(
        x, target=target, additional_forward_args=(scale,), n_steps="auto",
        tolerance=tolerance, max_steps=max_steps, return_convergence_delta=True,
    )
    assert torch.equal(cam.last_n_steps, used)  # the criterion does not depend on the variant
    check_against_fixed_counts(
        cam, x, maps, deltas, used, tolerance, max_steps,
        target=target, extra=scale, variant=variant, relu_attributions=False,
    )


def test_auto_on_a_cnn_with_softmax_and_a_cap() -> None:
    model = small_cnn()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    cam = LayerRSIGradCam(model, model.block2)
    target = [0, 2, 3]
    for tolerance, max_steps in ((1e-2, 256), (1e-12, 40)):
        maps, deltas = cam.attribute(
            x, target=target, n_steps="auto", tolerance=tolerance, max_steps=max_steps,
            output_transform="softmax", return_convergence_delta=True,
        )
        used = cam.last_n_steps
        assert used is not None
        if max_steps == 40:  # the cap: the largest 4 * 2**j not above max_steps
            assert used.tolist() == [32, 32, 32]
        check_against_fixed_counts(
            cam, x, maps, deltas, used, tolerance, max_steps,
            target=target, output_transform="softmax",
        )


def test_old_points_are_reused() -> None:
    """An example that stops at m costs m + 1 path points, not the sum over levels."""
    model, x, scale, target = wavy_batch()
    rows: list[int] = []
    handle = model.layer.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        cam = LayerRSIGradCam(model, model.layer)
        cam.attribute(
            x[3:4], target=target[3], additional_forward_args=(scale[3:4],), n_steps="auto",
            tolerance=1e-3,
        )
    finally:
        handle.remove()
    assert cam.last_n_steps is not None
    m = int(cam.last_n_steps[0])
    assert m >= 16, "the example should need a few doublings"
    assert sum(rows) == m + 1


@pytest.mark.parametrize("device", DEVICES)
def test_examples_converge_independently_of_their_batch_mates(device: str) -> None:
    model, x, scale, target = wavy_batch(device)
    cam = LayerRSIGradCam(model, model.layer)
    kwargs = dict(n_steps="auto", tolerance=1e-3, relu_attributions=False)
    together = cam.attribute(x, target=target, additional_forward_args=(scale,), **kwargs)
    steps_together = cam.last_n_steps
    assert steps_together is not None and steps_together.device.type == device
    order = [4, 2, 0, 3, 1]
    shuffled = cam.attribute(
        x[order], target=[target[i] for i in order],
        additional_forward_args=(scale[order],), **kwargs,
    )
    assert cam.last_n_steps is not None
    assert torch.equal(cam.last_n_steps, steps_together[order])
    torch.testing.assert_close(shuffled, together[order], rtol=1e-10, atol=1e-12)
    for i in range(5):
        alone = cam.attribute(
            x[i : i + 1], target=target[i], additional_forward_args=(scale[i : i + 1],),
            **kwargs,
        )
        assert cam.last_n_steps is not None
        assert int(cam.last_n_steps[0]) == int(steps_together[i])
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("internal_batch_size", [1, 3, 7])
def test_internal_batch_size_does_not_change_the_result(
    variant: str, internal_batch_size: int
) -> None:
    model, x, scale, target = wavy_batch()
    cam = LayerRSIGradCam(model, model.layer)
    kwargs = dict(
        target=target, additional_forward_args=(scale,), n_steps="auto", tolerance=1e-3,
        variant=variant, relu_attributions=False,
    )
    reference = cam.attribute(x, **kwargs)
    reference_steps = cam.last_n_steps
    rows: list[int] = []
    handle = model.layer.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        bounded = cam.attribute(x, internal_batch_size=internal_batch_size, **kwargs)
    finally:
        handle.remove()
    assert max(rows) <= internal_batch_size
    assert cam.last_n_steps is not None and reference_steps is not None
    assert torch.equal(cam.last_n_steps, reference_steps)
    torch.testing.assert_close(bounded, reference, rtol=1e-10, atol=1e-12)


def test_predicted_class_target_and_model_left_as_found() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    cam = LayerRSIGradCam(model, model.block2)
    with untouched(model, x):
        implicit = cam.attribute(x, n_steps="auto", tolerance=1e-3, output_transform="softmax")
    steps = cam.last_n_steps
    predicted = model(x).argmax(dim=1).tolist()
    explicit = cam.attribute(
        x, target=predicted, n_steps="auto", tolerance=1e-3, output_transform="softmax"
    )
    assert cam.last_n_steps is not None and steps is not None
    assert torch.equal(cam.last_n_steps, steps)
    torch.testing.assert_close(implicit, explicit, rtol=1e-12, atol=1e-14)


def test_fixed_counts_report_their_steps_and_empty_batches_work() -> None:
    model = small_cnn()
    cam = LayerRSIGradCam(model, model.block3)
    assert cam.last_n_steps is None
    cam.attribute(torch.rand(3, 3, 16, 16, dtype=torch.float64), target=1, n_steps=7)
    assert cam.last_n_steps is not None and cam.last_n_steps.tolist() == [7, 7, 7]
    maps, deltas = cam.attribute(
        torch.rand(0, 3, 16, 16, dtype=torch.float64), target=1, n_steps="auto",
        return_convergence_delta=True,
    )
    assert maps.shape == (0, 1, 4, 4) and deltas.shape == (0,)
    assert cam.last_n_steps is not None and cam.last_n_steps.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(n_steps="fast"), ValueError, "n_steps must be an int >= 1 or 'auto'"),
        (dict(n_steps=None), TypeError, "n_steps must be an int or 'auto'"),
        (dict(n_steps="auto", tolerance=0.0), ValueError, "tolerance"),
        (dict(n_steps="auto", tolerance=-1e-2), ValueError, "tolerance"),
        (dict(n_steps="auto", tolerance=float("nan")), ValueError, "tolerance"),
        (dict(n_steps="auto", tolerance=float("inf")), ValueError, "tolerance"),
        (dict(n_steps="auto", tolerance="1e-2"), TypeError, "tolerance"),
        (dict(n_steps="auto", max_steps=3), ValueError, "max_steps must be at least 4"),
        (dict(n_steps="auto", max_steps=64.0), TypeError, "max_steps"),
        (dict(n_steps="auto", max_steps=True), TypeError, "max_steps"),
        (
            dict(n_steps="auto", variant="relu_gradients", return_convergence_delta=True),
            ValueError,
            "return_convergence_delta",
        ),
    ],
)
def test_bad_step_arguments_are_named(kwargs: dict, error: type, message: str) -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with untouched(model, x), pytest.raises(error, match=message):
        LayerRSIGradCam(model, model.block3).attribute(x, target=0, **kwargs)
