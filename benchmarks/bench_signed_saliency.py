"""Speed and peak memory of ActiveSaliency against its peers, printed as ratios.

Peers, all on the same inputs and device:

* ``loop``: the straightforward way the authors compute active saliency: one forward
  pass, then one backward pass per class, keeping every class gradient and comparing
  them at the end (memory ``num_classes x input``).
* ``saliency``: one call of Captum's ``Saliency`` (a single backward pass; the cost of
  the plain gradient map, a floor no all-class method can reach).

Rows ``engine[vmap]`` / ``engine[loop]`` force one back-propagation strategy of the
class-gradient engine; ``ActiveSaliency`` uses ``"auto"`` (vmap on CUDA, loop on CPU).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the memory held before
the call. On CPU there is no allocator statistic, so the script counts the bytes of
every tensor storage created during the call (a ``TorchDispatchMode`` that adds a
storage's size when an operator returns it and subtracts it when the storage is freed)
and reports the highest total: the peak of live tensor bytes the call allocated,
excluding the model's parameters and the inputs. It is measured in a separate, untimed
run because the tracking slows the call down.

Run ``python benchmarks/bench_signed_saliency.py [--device auto|cpu|cuda] [--quick]`` with
the package installed (``pip install -e .``) or ``PYTHONPATH=.`` from the repository root.
``--quick`` times one call after a warm-up instead of the median of five (about two
minutes on a 2-core CPU, seconds on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from captum.attr import Saliency
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from captum_regularized._internal.class_gradients import class_gradients
from captum_regularized.attr import ActiveSaliency
from captum_regularized.models import SimpleCNN


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created inside the block and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._tracked:
                continue
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def author_loop(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Active saliency the straightforward way: every class gradient kept, then compared."""
    x = x.detach().requires_grad_()
    output = model(x)
    target = output.argmax(1)
    grads = torch.stack(
        [
            torch.autograd.grad(output[:, c].sum(), x, retain_graph=True)[0]
            for c in range(output.shape[1])
        ]
    )
    rows = torch.arange(x.shape[0], device=x.device)
    g_t = grads[target, rows]
    others = grads.clone()
    others[target, rows] = float("-inf")
    return torch.where(g_t > others.amax(0), g_t, torch.zeros_like(g_t)).abs()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory of one call of ``fn`` (see the module docstring for what is counted)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as tracker:
        result = fn()
        del result
    return tracker.peak


def cases() -> list[tuple[str, Callable[[], torch.nn.Module], int, int]]:
    """(name, model factory, batch, image size)."""
    return [
        ("SimpleCNN(10 classes, width 16)", lambda: SimpleCNN(num_classes=10), 8, 32),
        ("resnet18(10 classes)",
         lambda: torchvision.models.resnet18(weights=None, num_classes=10), 8, 64),
        ("resnet18(100 classes)",
         lambda: torchvision.models.resnet18(weights=None, num_classes=100), 8, 64),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    repeats = args.repeats or (1 if args.quick else 5)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    print(f"device={device} threads={torch.get_num_threads()} repeats={repeats} (median)")
    header = f"{'case':34s} {'method':16s} {'time ms':>9s} {'peak MiB':>9s} " \
             f"{'t/loop':>7s} {'t/sal':>7s} {'m/loop':>7s} {'m/sal':>7s}"
    print(header)
    for case, factory, batch, size in cases():
        torch.manual_seed(0)
        model = factory().to(device).eval()
        x = torch.rand(batch, 3, size, size, device=device)
        saliency = Saliency(model)
        active = ActiveSaliency(model)
        methods: dict[str, Callable[[], Any]] = {
            "loop": lambda: author_loop(model, x),
            "saliency": lambda: saliency.attribute(x, target=0, abs=False),
            "ActiveSaliency": lambda: active.attribute(x),
            "engine[vmap]": lambda: class_gradients(model, (x,), strategy="vmap"),
            "engine[loop]": lambda: class_gradients(model, (x,), strategy="loop"),
        }
        measured = {
            key: (seconds(fn, device, repeats), peak_bytes(fn, device))
            for key, fn in methods.items()
        }
        loop_t, loop_m = measured["loop"]
        sal_t, sal_m = measured["saliency"]
        for key, (t, m) in measured.items():
            print(
                f"{case:34s} {key:16s} {t * 1e3:9.1f} {m / 2**20:9.1f} "
                f"{t / loop_t:7.2f} {t / sal_t:7.2f} {m / loop_m:7.2f} {m / sal_m:7.2f}"
            )
    print("t/loop < 1 means faster than the per-class loop; m/* compare peak memory.")


if __name__ == "__main__":
    main()
