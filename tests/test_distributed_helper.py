"""The ``tests/distributed.py`` helper: ranks really talk, failures surface."""

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed


def _all_reduce_rank(rank: int, world_size: int, offset: float) -> dict:
    value = torch.tensor([float(rank) + offset])
    dist.all_reduce(value)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": value}


def _fail_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one refuses")
    return rank


def test_all_reduce_sums_over_two_ranks():
    results = run_distributed(_all_reduce_rank, 0.5, world_size=2)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 for r in results)
    for r in results:
        torch.testing.assert_close(r["sum"], torch.tensor([0.5 + 1.5]))


def test_a_failing_rank_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match="rank one refuses"):
        run_distributed(_fail_on_rank_one, world_size=2)


def _fail_while_other_rank_waits(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank one fails before the collective")
    dist.all_reduce(torch.zeros(1))


def test_a_rank_blocked_in_a_collective_does_not_wait_for_the_timeout():
    with pytest.raises(RuntimeError, match="fails before the collective"):
        run_distributed(_fail_while_other_rank_waits, world_size=2, timeout_s=60)
