"""Run a function in a few CPU processes joined by a ``gloo`` process group.

Tests of distributed behaviour (DistributedDataParallel, all-reduced metrics) call
:func:`run_distributed` with a *module-level* function (it must be picklable, so the
spawned children can import it)::

    def _sum_ranks(rank: int, world_size: int, offset: float) -> torch.Tensor:
        value = torch.tensor([rank + offset])
        torch.distributed.all_reduce(value)
        return value

    results = run_distributed(_sum_ranks, 0.5, world_size=2)   # one result per rank

Each child process gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, one
thread, and a ``gloo`` process group that is destroyed when ``fn`` returns or raises.
``fn``'s return value (CPU tensors or anything ``torch.save`` can store) comes back
to the parent through a file in a temporary directory; a child's exception comes back
as its traceback, raised in the parent as ``RuntimeError``. A child that is still
running after ``timeout_s`` is killed and the parent raises ``TimeoutError``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_distributed"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    out = Path(out_dir)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save({"result": result}, out / f"rank{rank}.pt")
    except BaseException:  # every failure must reach the parent
        (out / f"rank{rank}.err").write_text(traceback.format_exc())


def run_distributed(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned ``gloo`` processes.

    Parameters
    ----------
    fn : callable
        A module-level function (picklable). It runs with the default process group
        initialised and returns something ``torch.save`` can store (tensors are best
        returned on the CPU).
    *args : Any
        Extra picklable arguments passed to every rank.
    world_size : int
        Number of processes.
    timeout_s : float
        Wall-clock limit for the whole group; stragglers are killed.

    Returns
    -------
    list
        ``fn``'s return value for each rank, in rank order.

    Raises
    ------
    RuntimeError
        When a rank raised (the message holds its traceback) or died without a result.
    TimeoutError
        When the ranks did not finish within ``timeout_s``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    context = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="run_distributed_") as out_dir:
        processes = [
            context.Process(
                target=_child, args=(rank, world_size, port, out_dir, fn, args), daemon=True
            )
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        out = Path(out_dir)
        try:
            # Poll, so that one failing rank ends the group at once instead of leaving
            # the others blocked in a collective until the timeout.
            while any(p.is_alive() for p in processes):
                if any(out.glob("rank*.err")):
                    break
                if time.monotonic() > deadline:
                    stuck = [rank for rank, p in enumerate(processes) if p.is_alive()]
                    raise TimeoutError(f"ranks {stuck} still running after {timeout_s} s")
                processes[0].join(0.05)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        errors = [
            f"rank {rank}:\n{(out / f'rank{rank}.err').read_text()}"
            for rank in range(world_size)
            if (out / f"rank{rank}.err").exists()
        ]
        if errors:
            raise RuntimeError("a distributed rank failed\n" + "\n".join(errors))
        results = []
        for rank, process in enumerate(processes):
            path = out / f"rank{rank}.pt"
            if not path.exists():
                raise RuntimeError(
                    f"rank {rank} exited with code {process.exitcode} and left no result"
                )
            results.append(torch.load(path, weights_only=False)["result"])
        return results
