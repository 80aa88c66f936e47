"""Speed and peak memory of LayerGradCamPlusPlus and LayerScoreCam against pytorch-grad-cam.

Setting: torchvision ``resnet18`` (random weights, 10 classes, eval mode) at ``layer4``
(512 channels), the predicted classes as targets. Grad-CAM++ on a batch of 8 images of
64x64; Score-CAM, which runs the model once per example and channel, on 2 images of
32x32 (1,024 masked forward passes). Peers, on the same model, inputs and device:

* ``pgc``: pytorch-grad-cam's ``GradCAMPlusPlus`` / ``ScoreCAM`` as users call them
  (``cam(input_tensor, targets=[ClassifierOutputTarget(k), ...])``; its maps come back
  min-max scaled and resized to the input, as numpy arrays: that post-processing is
  part of its time). ``ScoreCAM`` runs 16 masked images per forward pass by default;
  ``pgc[batch=N]`` gives it the pass size ours picks.
* ``grad_cam``: Captum's ``LayerGradCam`` (one forward, one backward pass), the floor
  for a gradient CAM.

``ours`` is our class as called by default (Score-CAM: about 2**20 input elements per
pass on CPUs, 2**24 on GPUs); ``ours[ibs=16]`` runs pytorch-grad-cam's default pass
size. The maps agree with pytorch-grad-cam's (checked in
``tests/attr``); here only the cost is compared.

Time: median time per call after one warm-up, the methods interleaved; ``--clock cpu``
takes the process's CPU time instead of wall-clock time (for a CPU shared with other
programs; use it with ``--threads 1``). Peak memory: the most memory the call's own
tensors held at once, above what was held before it (see ``benchmarks/_measure.py``).

Run ``python benchmarks/bench_cams.py [--device auto|cpu|cuda] [--quick] [--threads N]
[--clock wall|cpu]``; needs ``pip install grad-cam``.
"""

# TQDM_DISABLE is set before any import: tqdm reads it when it is imported.
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM shows progress bars

import argparse
from collections.abc import Callable
from typing import Any

import _measure as measure
import pytorch_grad_cam
import torch
import torchvision
from captum.attr import LayerGradCam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from captum_regularized.attr import LayerGradCamPlusPlus, LayerScoreCam


def ours_rows_per_pass(cam: LayerScoreCam, x: torch.Tensor, target: list[int]) -> int:
    """The most rows of one masked pass ours runs by default (read off one untimed call)."""
    model = cam.forward_func
    assert isinstance(model, torch.nn.Module)
    rows: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        cam.attribute(x, target=target)
    finally:
        handle.remove()
    return max(rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    measure.add_run_arguments(parser, quick_help="one timed call after the warm-up, no memory")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--batch", type=int, default=8, help="Grad-CAM++ batch")
    parser.add_argument("--size", type=int, default=64, help="Grad-CAM++ image size")
    parser.add_argument("--score-batch", type=int, default=2, help="Score-CAM batch")
    parser.add_argument("--score-size", type=int, default=32, help="Score-CAM image size")
    args = parser.parse_args()
    device = measure.run_device(args)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).eval()
    layer = model.layer4

    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    classes = model(x).argmax(dim=1).tolist()
    targets = [ClassifierOutputTarget(k) for k in classes]
    plus_plus = LayerGradCamPlusPlus(model, layer)
    pgc_plus_plus = pytorch_grad_cam.GradCAMPlusPlus(model, [layer])
    grad_cam = LayerGradCam(model, layer)
    gradient_methods: dict[str, Callable[[], Any]] = {
        "ours": lambda: plus_plus.attribute(x, target=classes, eps=1e-6),
        "pgc": lambda: pgc_plus_plus(x, targets),
        "grad_cam": lambda: grad_cam.attribute(x, target=classes),
    }

    xs = torch.rand(args.score_batch, 3, args.score_size, args.score_size, device=device)
    score_classes = model(xs).argmax(dim=1).tolist()
    score_targets = [ClassifierOutputTarget(k) for k in score_classes]
    score_cam = LayerScoreCam(model, layer)
    pgc_score = pytorch_grad_cam.ScoreCAM(model, [layer])
    pgc_score_same = pytorch_grad_cam.ScoreCAM(model, [layer])
    pgc_score_same.batch_size = ours_rows_per_pass(score_cam, xs, score_classes)
    score_methods: dict[str, Callable[[], Any]] = {
        "ours": lambda: score_cam.attribute(xs, target=score_classes),
        "ours[ibs=16]": lambda: score_cam.attribute(
            xs, target=score_classes, internal_batch_size=16
        ),
        "pgc": lambda: pgc_score(xs, score_targets),
        f"pgc[batch={pgc_score_same.batch_size}]": lambda: pgc_score_same(xs, score_targets),
    }

    memory = not args.quick
    print(
        f"resnet18/layer4 device={device} threads={torch.get_num_threads()} "
        f"repeats={repeats} (median, {args.clock} clock)"
    )
    print(f"\nGrad-CAM++: batch {args.batch}, {args.size}x{args.size}")
    rows = measure.measured_rows(gradient_methods, device, repeats, clock=args.clock,
                                 memory=memory)
    measure.print_table(rows, ["pgc", "grad_cam"])
    plus_ratio = rows["ours"].seconds / rows["pgc"].seconds
    print(
        f"\nScore-CAM: batch {args.score_batch}, {args.score_size}x{args.score_size}, "
        f"{args.score_batch * 512} masked inputs"
    )
    score_rows = measure.measured_rows(score_methods, device, repeats, clock=args.clock,
                                       memory=memory)
    measure.print_table(score_rows, ["pgc"])
    score_ratio = score_rows["ours"].seconds / score_rows["pgc"].seconds
    print(
        f"\ntargets: LayerGradCamPlusPlus/GradCAMPlusPlus time {plus_ratio:.2f} (goal <= 1.0); "
        f"LayerScoreCam/ScoreCAM time {score_ratio:.2f} (goal <= 1.0)"
    )


if __name__ == "__main__":
    main()
