"""Speed of the model-parameter randomisation test against Quantus's ``MPRT``.

Peers, on the same model, images and explanation (Captum's signed ``Saliency``), cascading
randomisation from the classifier down:

* ``quantus MPRT``: ``quantus.MPRT(layer_order="top_down")`` with its defaults (the
  Spearman correlation of the absolute maps), the explanation wrapped the way Quantus
  calls it (NumPy arrays in and out).
* ``quantus MPRT x2``: two such calls, absolute and signed Spearman correlations: the
  two of our four similarities that Quantus computes.
* ``ours``: :func:`~captum_regularized.metrics.model_parameter_randomisation`, all four
  similarities (Spearman of absolute and signed maps, SSIM, cosine).
* ``explain only``: just the ``L + 1`` explanations ours needs (the original model and
  one per layer) on copies re-initialised in place, nothing else: the floor that every
  implementation pays; Quantus computes ``L + 2`` explanations.

Before timing, ours is checked against Quantus: with per-layer seeds ``[43] * L`` it
re-initialises exactly as ``MPRT(seed=42)`` does, so the per-example Spearman
correlations agree (the largest difference is printed). The ratios ``t/quantus MPRT``
are row time / Quantus's time (below 1: faster than Quantus).

Time: median time per call after one warm-up, the peers interleaved
(``benchmarks/_measure.py``); ``--clock cpu`` takes the process's CPU time instead of
wall-clock time (for a CPU shared with other programs; use it with ``--threads 1``).

Run ``python benchmarks/bench_parameter_randomisation.py [--device auto|cpu|cuda]
[--quick] [--threads N] [--clock wall|cpu]`` from the repository root with
``PYTHONPATH=.`` (or the package installed); needs ``pip install quantus``. The default
is a ``SimpleCNN`` (width 8, 9 layers with parameters) on 16 images of 32x32;
``--quick`` uses 8 images.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable
from typing import Any

import _measure as measure
import numpy as np
import torch
from captum.attr import Saliency

from captum_regularized.metrics import model_parameter_randomisation
from captum_regularized.models import SimpleCNN


def signed_saliency(model: torch.nn.Module, inputs: torch.Tensor, target: Any) -> torch.Tensor:
    return Saliency(model).attribute(inputs, target=target, abs=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_run_arguments(parser, quick_help="8 images instead of 16")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = parser.parse_args()
    device = measure.run_device(args)
    repeats = args.repeats or 3
    batch = 8 if args.quick else 16
    try:
        import quantus
    except ImportError as error:
        raise SystemExit("this benchmark needs quantus: pip install quantus") from error
    warnings.filterwarnings("ignore")

    torch.manual_seed(0)
    model = SimpleCNN(num_classes=10, width=8).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    x_numpy, y_numpy = x.cpu().numpy(), y.cpu().numpy()
    layers = [n for n, m in model.named_modules() if next(m.parameters(False), None) is not None]
    layers.reverse()

    def quantus_explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray,
                        **kwargs: Any) -> np.ndarray:
        t = torch.as_tensor(inputs, device=device).requires_grad_()
        return signed_saliency(model, t, torch.as_tensor(targets, device=device)).detach().cpu(
        ).numpy()

    def quantus_mprt(absolute: bool) -> Any:
        metric = quantus.MPRT(layer_order="top_down", abs=absolute, normalise=absolute,
                              disable_warnings=True, display_progressbar=False)
        return metric(model=model, x_batch=x_numpy, y_batch=y_numpy,
                      explain_func=quantus_explain, device=str(device))

    def ours() -> Any:
        return model_parameter_randomisation(model, x, y, signed_saliency, seed=[43] * len(layers))

    def explain_only() -> list[torch.Tensor]:
        working = copy.deepcopy(model)
        maps = [signed_saliency(working, x.detach().requires_grad_(), y)]
        for name in layers:
            working.get_submodule(name).reset_parameters()
            maps.append(signed_saliency(working, x.detach().requires_grad_(), y))
        return maps

    result, reference = ours(), quantus_mprt(True)
    difference = max(
        float(np.max(np.abs(np.asarray(reference[name])
                            - result.scores[name].spearman_abs.cpu().numpy())))
        for name in layers
    )
    print(f"SimpleCNN (width 8, {len(layers)} layers) device={device} "
          f"threads={torch.get_num_threads()} images={batch}x3x32x32 "
          f"repeats={repeats} (median, {args.clock} clock)")
    print(f"agreement with Quantus: max |Spearman(abs) ours - Quantus| = {difference:.2e}")
    peers: dict[str, Callable[[], Any]] = {
        "quantus MPRT": lambda: quantus_mprt(True),
        "quantus MPRT x2": lambda: (quantus_mprt(True), quantus_mprt(False)),
        "ours": ours,
        "explain only": explain_only,
    }
    rows = measure.measured_rows(peers, device, repeats, clock=args.clock, memory=False)
    measure.print_table(rows, ["quantus MPRT"], label="cascading MPRT")


if __name__ == "__main__":
    main()
