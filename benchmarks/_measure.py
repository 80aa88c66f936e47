"""Measuring mechanics shared by the scripts in ``benchmarks/``.

One place for: picking the device from ``--device auto|cpu|cuda``, synchronising it,
the median time and the peak memory of a call, and printing a table of rows with
ratios against named reference rows.

Peak memory (:func:`peak_bytes`) means the same on both devices: the most memory the
call's own tensors held at once, above what was held before the call (the model's
parameters and the inputs are not counted; anything the call allocates and keeps, such
as new parameter gradients, is). On CUDA it is ``torch.cuda.max_memory_allocated``
minus the allocated memory before the call. On CPU there is no allocator statistic, so
a ``TorchDispatchMode`` adds a tensor storage's size when an operator returns a new one
(not a view of or an in-place write to an operator input) and subtracts it when the
storage is freed, and the highest total is reported. That count is deterministic and
not disturbed by other processes, unlike the resident-set size. The tracking slows the
call down, so memory is always measured in a separate, untimed call.

The scripts import this module as ``import _measure as measure``: Python puts a script's
own folder first on ``sys.path``, so it works for ``python benchmarks/bench_x.py`` from
any directory without ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device auto|cpu|cuda`` (default ``auto``: CUDA when present)."""
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"],
        help="auto (CUDA when present), cpu or cuda",
    )


def select_device(name: str) -> torch.device:
    """The device named by ``--device``; ``"auto"`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def add_run_arguments(parser: argparse.ArgumentParser, *, quick_help: str) -> None:
    """Add ``--device``, ``--quick``, ``--repeats`` (default: none given) and ``--threads``."""
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` (where given) and return the device of ``--device``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return select_device(args.device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the live tensor storages created inside the block, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output that shares an input's storage (an in-place op, a view) is not new
        # memory: counting it would add the parameters an optimizer updates in place.
        inputs = {
            tensor.untyped_storage().data_ptr()
            for tensor in tree_flatten((args, kwargs))[0]
            if isinstance(tensor, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._tracked or key in inputs:
                continue
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def peak_bytes(call: Callable[[], Any], device: torch.device) -> int:
    """Peak memory of one call, above the memory held before it (see the module docs)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = call()
        sync(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as tracker:
        result = call()
        del result
    return tracker.peak


@dataclass(frozen=True)
class Row:
    """One measured row: median seconds and, where measured, peak bytes."""

    seconds: float
    peak_bytes: float | None = None


def measured_rows(
    calls: Mapping[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    *,
    clock: Literal["wall", "cpu"] = "wall",
    memory: bool = True,
) -> dict[str, Row]:
    """Median seconds of each call, by name, after one warm-up call of each, and its peak bytes.

    The calls are interleaved (one round runs every call once), so that a change in
    the load from other programs hits all of them alike. ``clock="wall"`` is the
    wall-clock time, synchronised with the device before and after each call.
    ``clock="cpu"`` is the process's CPU time, meant for single-threaded CPU runs on a
    shared machine, where other processes inflate wall time but not CPU time; it
    counts every thread's time, so it is not the wall time of a multi-threaded run,
    and it does not see GPU work (so it is refused on CUDA). With ``memory`` the peak
    (:func:`peak_bytes`) is taken in a separate untimed call of each, after the timed
    rounds; without it the rows have no peak.
    """
    if clock == "cpu" and device.type == "cuda":
        raise ValueError("clock='cpu' does not measure GPU work; use clock='wall' on CUDA")
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(1 + repeats):
        for name, call in calls.items():
            sync(device)
            start = now()
            call()
            sync(device)
            if round_index > 0:
                times[name].append(now() - start)
    return {
        name: Row(statistics.median(times[name]), peak_bytes(call, device) if memory else None)
        for name, call in calls.items()
    }


def print_table(
    rows: Mapping[str, Row],
    references: Sequence[str],
    *,
    label: str = "method",
    notes: Mapping[str, str] | None = None,
    notes_header: str = "",
) -> None:
    """Print time (ms) and peak memory (MiB) per row, with ratios against references.

    For each reference row ``r`` the columns ``t/r`` and ``m/r`` hold this row's time
    and peak memory divided by ``r``'s (below 1: faster / smaller than ``r``). Memory
    columns appear only when every row has a peak. ``notes`` adds a last text column.
    """
    with_memory = all(row.peak_bytes is not None for row in rows.values())
    # (title, width, number format, value of a row): the header and every line follow it.
    columns: list[tuple[str, int, str, Callable[[Row], float]]] = [
        ("time ms", 9, ".1f", lambda row: row.seconds * 1e3),
    ]
    if with_memory:
        columns.append(("peak MiB", 9, ".1f", lambda row: _ratio(row.peak_bytes, MIB)))
    for ref in references:
        size = max(8, len(ref) + 2)
        columns.append(
            (f"t/{ref}", size, ".2f", lambda row, ref=ref: row.seconds / rows[ref].seconds)
        )
        if with_memory:
            columns.append((
                f"m/{ref}", size, ".2f",
                lambda row, ref=ref: _ratio(row.peak_bytes, rows[ref].peak_bytes),
            ))
    width = max(len(label), *(len(name) for name in rows))
    header = f"{label:<{width}s}" + "".join(f" {title:>{size}s}" for title, size, _, _ in columns)
    if notes is not None:
        header += f" {notes_header}"
    print(header.rstrip())
    for name, row in rows.items():
        line = f"{name:<{width}s}" + "".join(
            f" {value(row):{size}{number}}" for _, size, number, value in columns
        )
        if notes is not None:
            line += f" {notes.get(name, '')}"
        print(line.rstrip())


def _ratio(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or reference == 0:
        return float("nan")
    return value / reference
