"""Maps of every usual shape become one value per pixel of the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captum_regularized._internal.pixel_maps import per_pixel_map
from captum_regularized.attr import reduce_channels
from captum_regularized.metrics._perturbation import PreparedBatch, pixel_ranks, prepare_batch
from captum_regularized.metrics._ratio import ratio_or_zero


def test_forms():
    maps = torch.randn(2, 3, 4, 4)
    for mode in ("max", "sum", "mean"):
        torch.testing.assert_close(
            per_pixel_map(maps, 2, (4, 4), channel_reduction=mode), reduce_channels(maps, mode)
        )
    single = torch.randn(2, 4, 4)
    torch.testing.assert_close(per_pixel_map(single, 2, (4, 4)), single[:, None])  # sign kept
    torch.testing.assert_close(per_pixel_map(single[:, None], 2, (4, 4)), single[:, None])
    repeated = single[:1].expand(2, 4, 4)[:, None]
    torch.testing.assert_close(per_pixel_map(single[0], 2, (4, 4)), repeated)
    low = torch.rand(2, 1, 2, 2)
    torch.testing.assert_close(
        per_pixel_map(low, 2, (6, 6)),
        F.interpolate(low, size=(6, 6), mode="bilinear", align_corners=False),
    )
    assert per_pixel_map(torch.ones(2, 4, 4, dtype=torch.float16), 2, (4, 4)).dtype == torch.float32


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="masks must hold one map per example"):
        per_pixel_map(torch.rand(3, 4, 4), 2, (4, 4), name="masks")
    with pytest.raises(ValueError, match="shape"):
        per_pixel_map(torch.rand(1, 1, 1, 4, 4), 1, (4, 4))
    with pytest.raises(ValueError, match="infinite"):
        per_pixel_map(torch.tensor([[float("inf")]]), 1, (1, 1))


def test_pixel_ranks_is_a_stable_descending_order():
    maps = torch.tensor([[[[0.5, 0.9, 0.5, 0.0]]]])
    assert pixel_ranks(maps).tolist() == [[1, 0, 2, 3]]
    values = torch.randn(3, 1, 5, 5)
    ranks = pixel_ranks(values)
    for b in range(3):
        order = sorted(range(25), key=lambda i: -values[b].flatten()[i].item())
        assert [ranks[b, i].item() for i in order] == list(range(25))


def test_the_chunked_forward_passes_other_args_unchanged():
    x = torch.arange(4.0)[:, None]
    prepared = PreparedBatch(
        lambda t, per_example, shared: t + per_example[:, None] + shared,
        x, x, 3, (10 * x[:, 0], 100.0),
    )
    out = prepared.evaluate(4, lambda i: (x[i], i), lambda o, i: o[:, 0])
    assert out.tolist() == [100.0, 111.0, 122.0, 133.0]


def test_ratio_or_zero_is_the_ratio_where_defined_and_zero_elsewhere():
    numerator = torch.tensor([1.0, 2.0, 3.0, 0.0], requires_grad=True)
    denominator = torch.tensor([4.0, 0.0, -2.0, 0.0], requires_grad=True)
    values = ratio_or_zero(numerator, denominator)
    assert values.tolist() == [0.25, 0.0, 0.0, 0.0]
    values.sum().backward()
    # d/dn (n / d) = 1 / d and d/dd (n / d) = -n / d**2 where d > 0; nothing elsewhere.
    assert numerator.grad.tolist() == [0.25, 0.0, 0.0, 0.0]
    assert denominator.grad.tolist() == [-1.0 / 16, 0.0, 0.0, 0.0]


def test_prepare_batch_refuses_an_empty_batch_only_when_asked():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    empty = torch.zeros(0, 1, 2, 2)
    assert prepare_batch(model, empty, torch.zeros(0, 2, 2)).size == 0
    with pytest.raises(ValueError, match="deletion needs at least one example"):
        prepare_batch(model, empty, torch.zeros(0, 2, 2), refuse_empty="deletion")
    prepared = prepare_batch(model, torch.rand(3, 1, 2, 2), torch.rand(1, 1, 1))
    assert prepared.maps.shape == (3, 1, 2, 2)
    assert bool((prepared.maps == prepared.maps[0]).all())  # one map for the batch, resized
