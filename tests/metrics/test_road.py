"""ROAD against a dense per-image solve, a per-example loop and pytorch-grad-cam's ROAD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_regularized.metrics import (
    ROAD_PERCENTILES,
    noisy_linear_imputation,
    road,
    road_removal_counts,
)
from tests.model_checks import untouched

OFFSETS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Reference: one dense linear system per image, built pixel by pixel, solved by numpy.

    Every removed pixel equals the weighted mean of its in-image neighbours (1/6 direct,
    1/12 diagonal), kept neighbours entering with their value.
    """
    channels, height, width = image.shape
    unknowns = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    position = {pixel: i for i, pixel in enumerate(unknowns)}
    matrix = np.zeros((len(unknowns), len(unknowns)))
    rhs = np.zeros((len(unknowns), channels))
    for i, (r, c) in enumerate(unknowns):
        for dr, dc in OFFSETS:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < height and 0 <= cc < width):
                continue
            weight = 1 / 6 if dr == 0 or dc == 0 else 1 / 12
            matrix[i, i] += weight
            if removed[rr, cc]:
                matrix[i, position[(rr, cc)]] -= weight
            else:
                rhs[i] += weight * image[:, rr, cc]
    out = image.astype(np.float64).copy()
    if unknowns:
        solution = np.linalg.solve(matrix, rhs)
        for i, (r, c) in enumerate(unknowns):
            out[:, r, c] = solution[i]
    return out


def _random_masks(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    share = torch.linspace(0.1, 0.95, count)[:, None, None, None]
    return torch.rand(count, 1, height, width, generator=gen) < share


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (16, 16)])
def test_imputation_matches_a_dense_solve(size):
    x = torch.rand(4, 3, *size, dtype=torch.float64)
    removed = _random_masks(4, *size)
    removed[0] = False  # nothing removed
    removed[1] = True
    removed[1, 0, 0, 0] = False  # one kept pixel carries the whole image
    got = noisy_linear_imputation(x, removed, noise=0.0)
    for b in range(4):
        expected = dense_imputation(x[b].numpy(), removed[b, 0].numpy())
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=0, atol=1e-9)
    assert torch.equal(got[0], x[0])
    torch.testing.assert_close(got[1], x[1, :, :1, :1].expand_as(x[1]))
    # float32 images: the same answer to float32 accuracy, dtype kept.
    single = noisy_linear_imputation(x.float(), removed, noise=0.0)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), got, rtol=0, atol=2e-5)


def test_imputation_properties():
    x = torch.rand(3, 2, 12, 12)
    removed = _random_masks(3, 12, 12, seed=3)[:, 0]  # (M, H, W) form
    gen = torch.Generator().manual_seed(5)
    noisy = noisy_linear_imputation(x, removed, noise=0.01, generator=gen)
    again = noisy_linear_imputation(x, removed, noise=0.01,
                                    generator=torch.Generator().manual_seed(5))
    plain = noisy_linear_imputation(x, removed, noise=0.0)
    mask = removed[:, None].expand_as(x)
    assert torch.equal(noisy, again)  # the generator makes it reproducible
    assert torch.equal(noisy[~mask], x[~mask])  # kept pixels are untouched
    assert bool((noisy[mask] != x[mask]).all())
    jitter = (noisy - plain)[mask]
    assert abs(float(jitter.std()) - 0.01) < 0.002 and abs(float(jitter.mean())) < 0.002
    assert torch.equal(noisy_linear_imputation(x, torch.zeros(12, 12, dtype=torch.bool)), x)


def test_imputation_refuses_bad_arguments():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="removed"):
        noisy_linear_imputation(x, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="removed"):
        noisy_linear_imputation(x, torch.zeros(2, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(x, torch.zeros(4, 4, dtype=torch.bool), noise=-1.0)
    with pytest.raises(ValueError, match="images"):
        noisy_linear_imputation(x[0], torch.zeros(4, 4, dtype=torch.bool))


def test_removal_counts_follow_numpys_percentile_threshold():
    gen = np.random.default_rng(0)
    for pixels in (4, 35, 64, 256):
        values = gen.random(pixels)
        for q in ROAD_PERCENTILES:
            removed = int((values >= np.percentile(values, 100 - q)).sum())
            assert road_removal_counts(pixels, [q]) == [removed]
            assert abs(removed - q * pixels / 100) <= 1


def _loop_road(model, x, maps, target, percentiles):
    """Reference: example by example, percentage by percentage, a dense solve each time."""
    model.eval()
    batch, _, height, width = x.shape
    pixels = height * width
    curves = {"morf": torch.zeros(batch, len(percentiles)),
              "lerf": torch.zeros(batch, len(percentiles))}
    clean = torch.zeros(batch)

    def score(image, b):
        output = model(torch.as_tensor(image, dtype=x.dtype)[None])[0]
        return float(output.softmax(0)[target[b]])

    with torch.no_grad():
        for b in range(batch):
            clean[b] = score(x[b], b)
            values = maps[b].flatten().tolist()
            order = sorted(range(pixels), key=lambda i: -values[i])  # ties: raster order
            for k, q in enumerate(percentiles):
                count = pixels - math.ceil((pixels - 1) * (100 - q) / 100)
                for name, chosen in (("morf", order[:count]), ("lerf", order[pixels - count:])):
                    removed = np.zeros((height, width), dtype=bool)
                    for i in chosen:
                        removed[divmod(i, width)] = True
                    curves[name][b, k] = score(dense_imputation(x[b].numpy(), removed), b)
    return clean, curves


def test_matches_a_per_example_loop(cnn, device):
    cnn = cnn.to(device)
    x = torch.rand(3, 3, 8, 8, device=device)
    maps = torch.randn(3, 1, 4, 4, device=device)  # low resolution, signed
    maps[0] = maps[0].round()  # ties
    target = [1, 3, 0]
    percentiles = (10, 35, 50, 90)
    with untouched(cnn, x, maps):
        result = road(cnn, x, maps, target, percentiles=percentiles, noise=0.0,
                      internal_batch_size=5)
    cnn_mode = cnn.training
    full = F.interpolate(maps, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    clean, curves = _loop_road(cnn.cpu(), x.cpu(), full.cpu(), target, percentiles)
    cnn.train(cnn_mode)
    assert result.percentiles.tolist() == list(percentiles)
    torch.testing.assert_close(result.clean.cpu(), clean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.morf.cpu(), curves["morf"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.lerf.cpu(), curves["lerf"], rtol=1e-4, atol=1e-5)
    morf_mean = (curves["morf"] - clean[:, None]).mean(1)
    lerf_mean = (curves["lerf"] - clean[:, None]).mean(1)
    torch.testing.assert_close(result.morf_mean.cpu(), morf_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.combined.cpu(), (lerf_mean - morf_mean) / 2,
                               rtol=1e-4, atol=1e-5)


@pytest.fixture
def pgc_road(monkeypatch):
    """pytorch-grad-cam's ROAD module with its imputation noise set to 0."""
    module = pytest.importorskip("pytorch_grad_cam.metrics.road")
    defaults = module.NoisyLinearImputer.__init__.__defaults__
    monkeypatch.setattr(module.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0, *defaults[1:]))
    return module


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_imputation_matches_pytorch_grad_cam(pgc_road):
    imputer = pgc_road.NoisyLinearImputer()
    x = torch.rand(5, 3, 9, 7)
    removed = _random_masks(5, 9, 7, seed=2)
    ours = noisy_linear_imputation(x, removed, noise=0.0)
    for b in range(5):
        theirs = imputer(x[b], (~removed[b, 0]).float())  # pgc's mask: 1 = kept
        torch.testing.assert_close(ours[b], theirs, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy on torch inside pgc
def test_matches_pytorch_grad_cam_road(cnn, pgc_road):
    """Logit scores percentage by percentage, probabilities through ``ROADCombined``."""
    targets_module = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    cnn.eval()
    x = torch.rand(3, 3, 8, 8)
    cams = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    classes = (0, 3, 1)
    logits = [targets_module.ClassifierOutputTarget(c) for c in classes]
    percentiles = (10, 50, 90)
    ours = road(cnn, x, torch.from_numpy(cams), logits, percentiles=percentiles, noise=0.0,
                apply_softmax=False)
    for field, metric in (("morf", pgc_road.ROADMostRelevantFirst),
                          ("lerf", pgc_road.ROADLeastRelevantFirst)):
        # pgc's percentile p removes 100 - p percent.
        expected = torch.stack([
            torch.from_numpy(metric(100 - q)(x, cams, logits, cnn)) for q in percentiles
        ], dim=1)
        got = getattr(ours, field) - ours.clean[:, None]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(getattr(ours, f"{field}_mean"), expected.mean(1),
                                   rtol=1e-4, atol=1e-5)
    softmax = [targets_module.ClassifierOutputSoftmaxTarget(c) for c in classes]
    combined = road(cnn, x, torch.from_numpy(cams), softmax, noise=0.0).combined
    expected = torch.from_numpy(pgc_road.ROADCombined()(x, cams, softmax, cnn))
    torch.testing.assert_close(combined, expected, rtol=1e-4, atol=1e-6)


def test_batch_of_one_chunks_orders_and_targets(cnn):
    x, maps = torch.rand(4, 3, 8, 8), torch.rand(4, 8, 8)
    target = torch.tensor([2, 0, 1, 3])
    whole = road(cnn, x, maps, target, noise=0.0)
    chunked = road(cnn, x, maps, target, noise=0.0, internal_batch_size=7)
    torch.testing.assert_close(chunked.combined, whole.combined)
    one = road(cnn, x[2:3], maps[2:3], 1, noise=0.0)
    torch.testing.assert_close(one.morf[0], whole.morf[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.lerf[0], whole.lerf[2], rtol=1e-5, atol=1e-6)
    morf = road(cnn, x, maps, target.tolist(), noise=0.0, order="morf")
    assert morf.lerf is None and morf.lerf_mean is None and morf.combined is None
    torch.testing.assert_close(morf.morf, whole.morf)
    lerf = road(cnn, x, maps, [(c,) for c in target.tolist()], noise=0.0, order="lerf")
    assert lerf.morf is None
    torch.testing.assert_close(lerf.lerf_mean, whole.lerf_mean)
    predicted = cnn.eval()(x).argmax(1)
    torch.testing.assert_close(road(cnn, x, maps, noise=0.0).combined,
                               road(cnn, x, maps, predicted, noise=0.0).combined)


def test_noise_is_drawn_from_the_generator(cnn):
    x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    first = road(cnn, x, maps, 0, generator=torch.Generator().manual_seed(1))
    second = road(cnn, x, maps, 0, generator=torch.Generator().manual_seed(1))
    plain = road(cnn, x, maps, 0, noise=0.0)
    assert torch.equal(first.morf, second.morf)
    assert not torch.equal(first.morf, plain.morf)


def test_empty_batch(cnn):
    result = road(cnn, torch.rand(0, 3, 8, 8), torch.rand(0, 8, 8), percentiles=(25, 75))
    assert result.morf.shape == (0, 2) and result.combined.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attributions": torch.rand(3, 8, 8)}, ValueError, "attributions"),
        ({"attributions": torch.rand(2, 2, 2, 8, 8)}, ValueError, "attributions"),
        ({"attributions": torch.full((2, 8, 8), math.nan)}, ValueError, "attributions"),
        ({"percentiles": (0, 50)}, ValueError, "percentiles"),
        ({"percentiles": (50, 100)}, ValueError, "percentiles"),
        ({"percentiles": (-10,)}, ValueError, "percentiles"),
        ({"percentiles": ()}, ValueError, "percentiles"),
        ({"percentiles": ("10",)}, TypeError, "percentiles"),
        ({"order": "random"}, ValueError, "order"),
        ({"noise": -0.1}, ValueError, "noise"),
        ({"noise": math.inf}, ValueError, "noise"),
        ({"target": 4}, ValueError, "target"),
        ({"inputs": torch.full((2, 3, 8, 8), math.nan)}, ValueError, "inputs"),
    ],
)
def test_bad_arguments_are_named(cnn, kwargs, error, match):
    arguments = {"inputs": torch.rand(2, 3, 8, 8), "attributions": torch.rand(2, 8, 8)}
    arguments.update(kwargs)
    with untouched(cnn, arguments["inputs"]), pytest.raises(error, match=match):
        road(cnn, **arguments)
