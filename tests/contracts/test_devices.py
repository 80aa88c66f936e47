"""Contract: on CUDA every entry point gives the CPU's answer (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.contracts.registry import Entry, make_batch, make_model, output_tensors, select

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.mark.parametrize("entry", select(lambda e: True))
def test_cuda_matches_cpu(entry: Entry):
    model, batch = make_model(), make_batch()
    target = batch.labels if entry.targets else None
    expected = output_tensors(entry.call(model, batch, target))
    cuda_batch = batch.to("cuda")
    cuda_target = cuda_batch.labels if entry.targets else None
    got = output_tensors(entry.call(model.to("cuda"), cuda_batch, cuda_target))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if g.dim() > 0:
            assert g.device.type == "cuda", f"{entry.name} returned a tensor on {g.device}"
        torch.testing.assert_close(g.cpu(), e, rtol=1e-3, atol=1e-4)
