"""Maps of every usual shape become one value per pixel of the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captum_regularized.attr import reduce_channels
from captum_regularized.metrics._batched_forward import forward_in_chunks, pixel_ranks
from captum_regularized.metrics._map_shapes import per_pixel_map


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


def test_forward_in_chunks_passes_other_args_unchanged():
    x = torch.arange(4.0)[:, None]
    out = forward_in_chunks(
        lambda t, per_example, shared: t + per_example[:, None] + shared,
        4, lambda i: (x[i], i), lambda o, i: o[:, 0], batch=4, device=x.device,
        internal_batch_size=3, additional_forward_args=(10 * x[:, 0], 100.0),
    )
    assert out.tolist() == [100.0, 111.0, 122.0, 133.0]
