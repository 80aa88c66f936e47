"""Overhead of the ``torchmetrics`` metric objects over the functions they wrap.

Peers, on the same model, images and maps, over the same batches:

* ``function``: the metric function called on each batch, its per-example values
  concatenated and averaged at the end (what :func:`evaluate_dataset` does on one
  process).
* ``Metric``: the :mod:`captum_regularized.metrics.torchmetrics` object, ``update`` per
  batch and ``compute`` at the end.

Both give the same number (checked before timing). ``t/function`` is the metric
object's time divided by the function's: the cost of the ``Metric`` machinery (state
bookkeeping; no process group here), which should stay close to 1.

Time: median wall-clock time of the whole pass (synchronised on CUDA) after one warm-up,
the peers interleaved (``benchmarks/_measure.py``). Needs the ``lightning`` extra
(``pip install -e ".[lightning]"``).

Run ``python benchmarks/bench_torchmetrics.py [--device auto|cpu|cuda] [--quick]`` from
the repository root with ``PYTHONPATH=.`` (or the package installed). The default is a
``SimpleCNN`` on 8 batches of 16 images of 32x32; ``--quick`` uses 4 batches of 8.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import _measure as measure
import torch

from captum_regularized import metrics
from captum_regularized.metrics import torchmetrics as metric_objects
from captum_regularized.models import SimpleCNN

CASES: dict[str, tuple[Callable[..., torch.Tensor], type, dict[str, Any]]] = {
    "deletion_auc": (metrics.deletion_auc, metric_objects.DeletionAUC, {"steps": 8}),
    "average_drop": (metrics.average_drop, metric_objects.AverageDrop, {}),
    "gini_sparseness": (metrics.gini_sparseness, metric_objects.GiniSparseness, {}),
}
"""Metric name: the function, its metric object, and settings shared by both."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_run_arguments(parser, quick_help="4 batches of 8 images")
    args = parser.parse_args()
    device = measure.run_device(args)
    repeats = args.repeats or (3 if args.quick else 5)
    num_batches, batch_size = (4, 8) if args.quick else (8, 16)

    torch.manual_seed(0)
    model = SimpleCNN(num_classes=10, width=8).to(device).eval()
    batches = [
        (torch.rand(batch_size, 3, 32, 32, device=device),
         torch.rand(batch_size, 32, 32, device=device))
        for _ in range(num_batches)
    ]
    print(f"device {device}, {num_batches} batches of {batch_size} images of 32x32, SimpleCNN")
    for name, (function, metric_class, settings) in CASES.items():
        map_only = name == "gini_sparseness"

        def with_function(function: Callable[..., torch.Tensor] = function,
                          settings: dict[str, Any] = settings,
                          map_only: bool = map_only) -> float:
            values = [
                function(maps, **settings) if map_only else function(model, x, maps, **settings)
                for x, maps in batches
            ]
            return float(torch.cat(values).mean())

        def with_metric(metric_class: type = metric_class, settings: dict[str, Any] = settings,
                        map_only: bool = map_only) -> float:
            metric = metric_class(**settings) if map_only else metric_class(model, **settings)
            metric = metric.to(device)
            for x, maps in batches:
                if map_only:
                    metric.update(maps)
                else:
                    metric.update(x, maps)
            return float(metric.compute())

        expected, got = with_function(), with_metric()
        if abs(expected - got) > 1e-5 * max(1.0, abs(expected)):
            raise SystemExit(f"{name}: the Metric gives {got}, the function {expected}")
        rows = measure.measured_rows(
            {"function": with_function, "Metric": with_metric}, device, repeats, memory=False
        )
        measure.print_table(rows, ["function"], label=name)


if __name__ == "__main__":
    main()
