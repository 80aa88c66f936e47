"""Deletion / insertion curves against hand-computed values and a per-pixel loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from captum_regularized.metrics import (
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
)
from captum_regularized.metrics.deletion_insertion import gaussian_blur
from tests.model_checks import untouched


def pixel_sum_model(images: torch.Tensor) -> torch.Tensor:
    """One output column: the sum of all pixels (scores computable by hand)."""
    return images.flatten(1).sum(dim=1, keepdim=True)


def _loop_curve(model, x, maps, target, steps, substrate, insert):
    """Reference: one example and one step at a time, pixels replaced in a Python loop."""
    batch, _, height, width = x.shape
    pixels = height * width
    model.eval()
    aucs, curves = [], []
    with torch.no_grad():
        for b in range(batch):
            values = maps[b].flatten().tolist()
            order = sorted(range(pixels), key=lambda i: -values[i])  # stable for ties
            scores, xs = [], []
            for k in range(steps + 1):
                count = k * pixels // steps
                image = substrate[b].clone() if insert else x[b].clone()
                for i in order[:count]:
                    r, c = divmod(i, width)
                    image[:, r, c] = x[b, :, r, c] if insert else substrate[b, :, r, c]
                probs = F.softmax(model(image[None]), dim=1)[0]
                scores.append(float(probs[target[b]]))
                xs.append(count / pixels)
            area = sum((scores[i] + scores[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(steps))
            aucs.append(area)
            curves.append(scores)
    return torch.tensor(aucs), torch.tensor(curves)


def test_hand_computed_pixel_sum():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    kwargs = dict(steps=4, substrate="zeros", apply_softmax=False)
    deletion = deletion_curve(pixel_sum_model, x, maps, 0, **kwargs)
    assert deletion.scores.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]]
    assert deletion.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert deletion.auc.tolist() == [6.25]
    insertion = insertion_curve(pixel_sum_model, x, maps, 0, **kwargs)
    assert insertion.scores.tolist() == [[0.0, 1.0, 3.0, 6.0, 10.0]]
    assert insertion.auc.tolist() == [3.75]


@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("substrate", ["zeros", 0.5, "blur"])
def test_matches_a_per_pixel_loop(cnn, insert, substrate):
    x = torch.rand(3, 3, 6, 6)
    maps = torch.rand(3, 3, 6, 6)
    target = [0, 3, 1]
    steps = 7  # does not divide the 36 pixels: uneven chunks
    function = insertion_curve if insert else deletion_curve
    with untouched(cnn, x, maps):
        curve = function(cnn, x, maps, target, steps=steps, substrate=substrate,
                         internal_batch_size=5)
    cnn_mode = cnn.training
    if substrate == "zeros":
        background = torch.zeros_like(x)
    elif substrate == "blur":
        background = gaussian_blur(x)
    else:
        background = torch.full_like(x, substrate)
    per_pixel = maps.abs().amax(dim=1)  # the default channel reduction
    auc, scores = _loop_curve(cnn, x, per_pixel, target, steps, background, insert)
    cnn.train(cnn_mode)
    torch.testing.assert_close(curve.scores, scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(curve.auc, auc, atol=1e-5, rtol=1e-4)


def test_chunking_does_not_change_the_result(cnn, device):
    cnn = cnn.to(device)
    x = torch.rand(4, 3, 8, 8, device=device)
    maps = torch.rand(4, 8, 8, device=device)
    one = deletion_auc(cnn, x, maps, steps=9, internal_batch_size=1)
    many = deletion_auc(cnn, x, maps, steps=9, internal_batch_size=1000)
    assert one.device == x.device
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)


def test_low_resolution_map_equals_its_upsampled_version(cnn):
    x = torch.rand(2, 3, 8, 8)
    low = torch.rand(2, 1, 4, 4)
    upsampled = F.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        insertion_auc(cnn, x, low, steps=8), insertion_auc(cnn, x, upsampled[:, 0], steps=8)
    )


def test_one_map_for_the_whole_batch_is_repeated(cnn):
    x = torch.rand(3, 3, 8, 8)
    shared = torch.rand(8, 8)
    torch.testing.assert_close(
        deletion_auc(cnn, x, shared, steps=4), deletion_auc(cnn, x, shared.expand(3, 8, 8), steps=4)
    )


def test_blur_equals_torchvision_away_from_the_border():
    x = torch.rand(2, 3, 24, 24)
    ours = gaussian_blur(x, kernel_size=5, sigma=1.5)
    reference = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[1.5, 1.5])
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], reference[..., 2:-2, 2:-2])
    assert gaussian_blur(torch.rand(1, 1, 3, 3)).shape == (1, 1, 3, 3)  # smaller than kernel


def test_per_example_additional_forward_args_follow_their_example():
    def scaled(images, scale):
        return images.flatten(1).sum(1, keepdim=True) * scale[:, None]

    x = torch.rand(3, 1, 4, 4)
    maps = torch.rand(3, 4, 4)
    scale = torch.tensor([1.0, 2.0, 3.0])
    auc = deletion_auc(scaled, x, maps, 0, steps=4, apply_softmax=False,
                       additional_forward_args=(scale,), internal_batch_size=2)
    plain = deletion_auc(pixel_sum_model, x, maps, 0, steps=4, apply_softmax=False)
    torch.testing.assert_close(auc, plain * scale)


def test_target_none_is_the_predicted_class(cnn):
    x = torch.rand(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8)
    cnn.eval()
    predicted = cnn(x).argmax(1)
    torch.testing.assert_close(
        deletion_auc(cnn, x, maps, steps=4), deletion_auc(cnn, x, maps, predicted, steps=4)
    )


def test_degenerate_maps_and_empty_batch(cnn):
    x = torch.rand(2, 3, 8, 8)
    for maps in (torch.zeros(2, 8, 8), torch.full((2, 8, 8), 3.0)):
        values = deletion_auc(cnn, x, maps, steps=4)
        assert torch.isfinite(values).all()
    empty = deletion_curve(cnn, torch.rand(0, 3, 8, 8), torch.rand(0, 8, 8), steps=4)
    assert empty.auc.shape == (0,) and empty.scores.shape == (0, 5)


def test_autocast_runs_and_stays_close(cnn):
    x = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    reference = deletion_auc(cnn, x, maps, steps=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = deletion_auc(cnn, x, maps, steps=4)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"substrate": "noise"}, ValueError, "substrate"),
        ({"substrate": torch.zeros(5)}, ValueError, "broadcast"),
        ({"channel_reduction": "median"}, ValueError, "channel_reduction"),
        ({"internal_batch_size": 0}, ValueError, "internal_batch_size"),
        ({"target": 9}, ValueError, r"\[0, 3\]"),
    ],
)
def test_bad_arguments_name_themselves(cnn, kwargs, error, match):
    x = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    with untouched(cnn, x, maps), pytest.raises(error, match=match):
        deletion_auc(cnn, x, maps, **kwargs)


def test_bad_shapes_are_rejected(cnn):
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="attributions"):
        deletion_auc(cnn, x, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="inputs"):
        deletion_auc(cnn, torch.rand(2, 64), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        deletion_auc(cnn, x, torch.full((2, 8, 8), float("nan")))
