"""Cost of the top-k interpretation attack, in plain-saliency calls and per example.

Rows, all on the same model, images and device:

* ``saliency``: one call of Captum's ``Saliency`` on the batch (one forward and one
  backward pass): the unit the attack is measured in.
* ``attack[steps=T]``: :func:`~captum_regularized.metrics.interpretation_attack` with
  ``T`` iterations. Each iteration is a double-backpropagation pass on the softplus
  surrogate plus one saliency map of the iterate on the real model; two clean maps and
  one final forward pass come on top, so expect roughly ``5 T + 2`` saliency calls.

The ``t/saliency`` column is the ratio to one saliency call; ``per example`` the time
of the row divided by the batch size; ``per step`` the attack's time per iteration in
saliency calls.

Time: median wall-clock time per call (synchronised on CUDA) after one warm-up, the
rows interleaved; ``--clock cpu`` takes the process's CPU time instead (for a CPU
shared with other programs; use it with ``--threads 1``). Peak memory: the most memory
the call's own tensors held at once, above what was held before it (model parameters
and inputs excluded), measured in a separate untimed call (see
``benchmarks/_measure.py``).

Run ``python benchmarks/bench_interpretation_attack.py [--device auto|cpu|cuda]
[--quick] [--clock wall|cpu] [--threads N]`` from the repository root with
``PYTHONPATH=.`` (or the package installed). The default is ``SimpleCNN(width=8)`` on
8 images of 32x32, 5 and 20 steps (under a minute on a 2-core CPU); ``--quick`` uses
4 images and 2 and 5 steps.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import _measure as measure
import torch
from captum.attr import Saliency

from captum_regularized.metrics import interpretation_attack
from captum_regularized.models import SimpleCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_run_arguments(parser, quick_help="4 images, 2 and 5 steps, 1 repeat")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = parser.parse_args()
    device = measure.run_device(args)
    torch.manual_seed(0)
    batch, all_steps, repeats = (4, (2, 5), 1) if args.quick else (8, (5, 20), 2)
    repeats = args.repeats or repeats
    model = SimpleCNN(10, width=8).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)
    saliency = Saliency(model)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")

    calls: dict[str, Callable[[], Any]] = {
        "saliency": lambda: saliency.attribute(x, target=target, abs=True),
    }
    def attack(steps: int) -> Callable[[], Any]:
        return lambda: interpretation_attack(
            model, x, epsilon=8 / 255, steps=steps, k=20, input_range=(0.0, 1.0)
        )

    for steps in all_steps:
        calls[f"attack[steps={steps}]"] = attack(steps)

    print(f"device={device} model=SimpleCNN(width=8) images={batch}x3x32x32 k=20 "
          f"(median of {repeats}, {args.clock} clock)")
    rows = measure.measured_rows(calls, device, repeats, clock=args.clock)
    unit = rows["saliency"].seconds
    notes = {
        name: f"{row.seconds / batch * 1e3:8.2f} ms/example"
        + (f", {(row.seconds / unit - 1) / steps:5.1f} saliency calls/step"
           if (steps := _steps(name)) else "")
        for name, row in rows.items()
    }
    measure.print_table(rows, ["saliency"], label="method", notes=notes, notes_header="per")


def _steps(name: str) -> int:
    """The ``T`` of an ``attack[steps=T]`` row (0 for other rows)."""
    if not name.startswith("attack[steps="):
        return 0
    return int(name[len("attack[steps="):-1])


if __name__ == "__main__":
    main()
