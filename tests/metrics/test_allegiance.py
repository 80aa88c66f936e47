"""The signed-saliency allegiance protocol on hand-made cases and against a plain loop."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.metrics import ALLEGIANCE_FRACTIONS, allegiance_deletion_auc
from tests.model_checks import untouched


def _corner_model(images: torch.Tensor) -> torch.Tensor:
    """Class 0 while the top-left pixel is bright (> 0.5), class 1 otherwise."""
    corner = images[:, 0, 0, 0]
    return torch.stack([10 * corner, torch.full_like(corner, 5.0)], dim=1)


def _trapezoid(ys, xs):
    return sum((ys[i] + ys[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1))


def test_fractions_are_the_papers():
    expected = (0, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert expected == ALLEGIANCE_FRACTIONS


def test_hand_made_corner_case():
    # 4x4 image: round(p * 16) pixels go at p = .03 -> 0, .05 -> 1, .07 -> 1, .1 -> 2, ...
    x = torch.ones(1, 1, 4, 4)
    maps = torch.rand(1, 4, 4) * 0.5
    maps[0, 0, 0] = 1.0  # the decisive pixel ranks first
    result = allegiance_deletion_auc(_corner_model, x, maps)
    expected_kept = [True, True] + [False] * 11
    assert result.kept[0].tolist() == expected_kept
    assert result.allegiance.tolist() == [float(k) for k in expected_kept]
    expected_auc = 0.03 + 0.02 / 2
    assert float(result.auc) == pytest.approx(expected_auc)
    assert float(result.per_example_auc[0]) == pytest.approx(expected_auc)


def test_zeros_are_never_deleted():
    x = torch.ones(1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1] = 1.0  # the only non-zero pixel; the decisive corner has value 0
    result = allegiance_deletion_auc(_corner_model, x, maps)
    assert result.kept.all()
    assert float(result.auc) == pytest.approx(0.9)
    # Negative values are deleted (after the positives), zeros still never are.
    maps[0] = -1.0
    maps[0, 1, 1], maps[0, 0, 0] = 1.0, 0.0
    assert allegiance_deletion_auc(_corner_model, x, maps, channel_reduction="sum").kept.all()
    # Control: a tiny non-zero value instead of 0 makes the corner deletable (2nd of 2).
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1], maps[0, 0, 0] = 1.0, 1e-3
    kept = allegiance_deletion_auc(_corner_model, x, maps).kept[0]
    assert kept.tolist() == [True] * 4 + [False] * 9  # 2 pixels go from p = .1 on


def test_fill_white_keeps_a_bright_pixel_bright():
    x = torch.ones(1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    assert allegiance_deletion_auc(_corner_model, x, maps, fill="white").kept.all()
    assert not allegiance_deletion_auc(_corner_model, x, maps, fill="black").kept[0, 2:].any()
    assert not allegiance_deletion_auc(_corner_model, x, maps, fill=0.2).kept[0, 2:].any()


def _loop_kept(model, x, maps, fill):
    """Reference: the protocol written out per example and per fraction."""
    batch, _, height, width = x.shape
    model.eval()
    kept = []
    with torch.no_grad():
        original = model(x).argmax(1)
        for b in range(batch):
            values = maps[b].flatten().tolist()
            nonzero = [i for i in range(height * width) if values[i] != 0]
            nonzero.sort(key=lambda i: -values[i])
            row = []
            for p in ALLEGIANCE_FRACTIONS:
                image = x[b].clone()
                for i in nonzero[: round(p * height * width)]:
                    image[:, i // width, i % width] = fill
                row.append(bool(model(image[None]).argmax(1)[0] == original[b]))
            kept.append(row)
    return torch.tensor(kept)


@pytest.mark.parametrize("fill", ["black", "white"])
def test_matches_a_loop_on_a_cnn(cnn, device, fill):
    cnn = cnn.to(device)
    x = torch.rand(6, 3, 8, 8, device=device)
    maps = torch.rand(6, 3, 8, 8, device=device)
    maps[maps < 0.3] = 0  # sparse: exercises the zero rule
    with untouched(cnn, x, maps):
        result = allegiance_deletion_auc(cnn, x, maps, fill=fill, internal_batch_size=7)
    mode = cnn.training
    kept = _loop_kept(cnn, x, maps.abs().amax(1), 0.0 if fill == "black" else 1.0)
    cnn.train(mode)
    assert result.kept.cpu().tolist() == kept.tolist()
    curve = kept.float().mean(0).tolist()
    assert result.allegiance.cpu().tolist() == pytest.approx(curve)
    assert float(result.auc) == pytest.approx(_trapezoid(curve, ALLEGIANCE_FRACTIONS))
    assert float(result.per_example_auc.mean()) == pytest.approx(float(result.auc))


def test_bad_input(cnn):
    x = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    with untouched(cnn, x, maps):
        with pytest.raises(ValueError, match="fill"):
            allegiance_deletion_auc(cnn, x, maps, fill="grey")
        with pytest.raises(ValueError, match="increasing"):
            allegiance_deletion_auc(cnn, x, maps, fractions=[0.5, 0.1])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            allegiance_deletion_auc(cnn, x, maps, fractions=[0.0, 1.5])
        with pytest.raises(ValueError, match="batch size 0"):
            allegiance_deletion_auc(cnn, x[:0], maps[:0])
