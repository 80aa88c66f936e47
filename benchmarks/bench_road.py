"""Speed of our batched ROAD against pytorch-grad-cam's ROAD on the same model and maps.

Peers, on the same model, images, maps and targets, both orders at the nine default
percentages with the paper's noise (0.01):

* ``pgc``: pytorch-grad-cam's ``ROADCombined`` (one scipy sparse direct solve per
  image and percentage on the host, one forward pass per percentage and order, plus
  one for the clean scores each time);
* ``ours``: :func:`~captum_regularized.metrics.road` (every image, percentage and
  order imputed by batched conjugate gradients and scored ``internal_batch_size`` at a
  time, on the inputs' device).

Before timing, both are run without noise and their per-example ``combined`` scores
are checked to agree. ``t/pgc`` is ``row time / pgc time`` (below 1: we are faster).

Time: median per call after one warm-up, the peers interleaved. On a CPU shared with
other jobs use ``--threads 1`` (the default here): scipy's solver is single-threaded,
and contended torch threads distort the comparison. ``--clock cpu`` measures process
CPU time instead of wall time.

Run ``python benchmarks/bench_road.py [--quick] [--device cpu|cuda]`` from the
repository root with ``PYTHONPATH=.`` (or the package installed). The default scores 8
images of 32x32 and 2 of 64x64 with a ``SimpleCNN`` (under a minute on one CPU core);
``--quick`` only the 32x32 case.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Literal

import _measure as measure
import numpy as np
import torch
import torch.nn.functional as F

from captum_regularized.metrics import road
from captum_regularized.models import SimpleCNN


def _smooth_maps(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """CAM-like maps: 7x7 random maps upsampled bilinearly, in [0, 1]."""
    coarse = torch.rand(batch, 1, 7, 7, device=device)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _case(model: torch.nn.Module, batch: int, size: int, device: torch.device,
          repeats: int, clock: Literal["wall", "cpu"]) -> None:
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x = torch.rand(batch, 3, size, size, device=device)
    maps = _smooth_maps(batch, size, device)
    cams = maps.cpu().numpy()
    classes = model(x).argmax(1).tolist()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]

    def pgc() -> np.ndarray:
        return pgc_road.ROADCombined()(x, cams, targets, model)

    def ours(noise: float = 0.01) -> torch.Tensor:
        combined = road(model, x, maps, targets, noise=noise).combined
        assert combined is not None  # both orders
        return combined

    # Agreement without noise (pytorch-grad-cam's imputer takes its noise as a default).
    defaults = pgc_road.NoisyLinearImputer.__init__.__defaults__
    pgc_road.NoisyLinearImputer.__init__.__defaults__ = (0.0, *defaults[1:])
    try:
        expected = torch.from_numpy(pgc())
    finally:
        pgc_road.NoisyLinearImputer.__init__.__defaults__ = defaults
    gap = float((ours(0.0).cpu() - expected).abs().max())
    assert gap < 1e-4, f"ROAD combined differs from pytorch-grad-cam by {gap}"

    peers: dict[str, Callable[[], object]] = {"pgc": pgc, "ours": ours}
    rows = measure.measured_rows(peers, device, repeats, clock=clock, memory=False)
    print(f"\nimages={batch}x3x{size}x{size}, 9 percentages x 2 orders, "
          f"max |combined - pgc| without noise = {gap:.1e} (median of {repeats})")
    measure.print_table(rows, ["pgc"], label="ROAD")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_run_arguments(parser, quick_help="only the 32x32 case")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 1
    device = measure.run_device(args)
    torch.manual_seed(0)
    model = SimpleCNN(10, width=8).to(device).eval()
    print(f"device={device} model=SimpleCNN(width=8) threads={torch.get_num_threads()} "
          f"clock={args.clock}")
    repeats = args.repeats or 3
    with torch.no_grad():
        _case(model, 8, 32, device, repeats, args.clock)
        if not args.quick:
            _case(model, 2, 64, device, max(1, repeats - 1), args.clock)


if __name__ == "__main__":
    main()
