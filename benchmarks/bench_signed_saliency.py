"""Speed and peak memory of ActiveSaliency against its peers, printed as ratios.

Peers, all on the same inputs and device:

* ``loop``: the straightforward way the authors compute active saliency: one forward
  pass, then one backward pass per class, keeping every class gradient and comparing
  them at the end (memory ``num_classes x input``).
* ``saliency``: one call of Captum's ``Saliency`` (a single backward pass; the cost of
  the plain gradient map, a floor no all-class method can reach).

Rows ``ActiveSaliency[vmap]`` / ``ActiveSaliency[loop]`` force one back-propagation
strategy of the class-gradient engine (the ``backward_strategy`` constructor keyword);
``ActiveSaliency`` uses ``"auto"`` (vmap on CUDA, loop on CPU).

Time: median wall-clock time per call (synchronised on CUDA) after one warm-up, the
methods interleaved. Peak memory: the most memory the call's own tensors held at once,
above what was held before it (model parameters and inputs excluded): the CUDA
allocator peak on GPUs, the peak of live tensor-storage bytes on CPUs, measured in a
separate untimed call (see ``benchmarks/_measure.py``).

Run ``python benchmarks/bench_signed_saliency.py [--device auto|cpu|cuda] [--quick]`` with
the package installed (``pip install -e .``) or ``PYTHONPATH=.`` from the repository root.
``--quick`` times one call after a warm-up instead of the median of five (a few
minutes on a 2-core CPU, seconds on a GPU).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import _measure as measure
import torch
import torchvision
from captum.attr import Saliency

from captum_regularized.attr import ActiveSaliency
from captum_regularized.models import SimpleCNN


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
    measure.add_run_arguments(parser, quick_help="fewer repeats")
    args = parser.parse_args()
    device = measure.run_device(args)
    repeats = args.repeats or (1 if args.quick else 5)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    print(f"device={device} threads={torch.get_num_threads()} repeats={repeats} (median)")
    for case, factory, batch, size in cases():
        torch.manual_seed(0)
        model = factory().to(device).eval()
        x = torch.rand(batch, 3, size, size, device=device)
        saliency = Saliency(model)
        active = ActiveSaliency(model)
        forced = {s: ActiveSaliency(model, backward_strategy=s) for s in ("vmap", "loop")}
        methods: dict[str, Callable[[], Any]] = {
            "loop": lambda model=model, x=x: author_loop(model, x),
            "saliency": lambda saliency=saliency, x=x: saliency.attribute(x, target=0, abs=False),
            "ActiveSaliency": lambda active=active, x=x: active.attribute(x),
            "ActiveSaliency[vmap]": lambda m=forced["vmap"], x=x: m.attribute(x),
            "ActiveSaliency[loop]": lambda m=forced["loop"], x=x: m.attribute(x),
        }
        rows = measure.measured_rows(methods, device, repeats)
        print(f"\n{case}")
        measure.print_table(rows, ["loop", "saliency"])
    print("t/loop < 1 means faster than the per-class loop; m/* compare peak memory.")


if __name__ == "__main__":
    main()
