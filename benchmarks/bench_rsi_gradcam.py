"""Speed and peak memory of LayerRSIGradCam against its peers, printed as ratios.

Setting (the issue's): torchvision ``resnet18`` (random weights, 10 classes) at
``layer4``, batch 4, 96x96 images, ``n_steps=50``, target scored after a softmax.
Peers, all on the same inputs and device:

* ``layer_ig``: Captum's ``LayerIntegratedGradients`` with the same steps and
  ``method="riemann_trapezoid"`` (its path runs in layer space, a different method
  with the same cost profile: the whole model runs on every path point).
* ``loop``: RSI-Grad-CAM the way the authors publish it: one forward and one backward
  pass per path point, then the trapezoidal sum.
* ``grad_cam``: one call of Captum's ``LayerGradCam`` (one forward and backward).

``rsi`` is ``LayerRSIGradCam`` as called by default (on CPUs passes of about 2**20
input elements, on GPUs all points in one pass); ``rsi[one pass]`` forces a single
pass, and ``layer_ig[ibs=N]`` gives Captum the pass size ours picked on CPUs.
``rsi[auto 1e-2]`` and ``rsi[auto 1e-3]`` choose the steps per example
(``n_steps="auto"`` at that tolerance, ``max_steps=256``); their notes give the steps
the examples used (mean, max) and the lowest per-example Spearman correlation of their
maps with a 256-step map (computed once, untimed; tied values get average ranks).
``--layer`` explains another stage of the ResNet (``layer3`` leaves a nonlinear
``layer4`` between the layer and the score, so the path sum converges more slowly).

Time: median wall-clock time per call (synchronised on CUDA) after one warm-up, the
methods interleaved. Peak memory: the most memory the call's own tensors held at once,
above what was held before it (model parameters and inputs excluded): the CUDA
allocator peak on GPUs, the peak of live tensor-storage bytes on CPUs, measured in a
separate untimed call (see ``benchmarks/_measure.py``).

Run ``python benchmarks/bench_rsi_gradcam.py [--device auto|cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import _measure as measure
import torch
import torchvision
from captum.attr import LayerGradCam, LayerIntegratedGradients
from torch import nn

from captum_regularized.attr import LayerRSIGradCam


def default_pass_rows(
    cam: LayerRSIGradCam, x: torch.Tensor, target: torch.Tensor, n_steps: int
) -> int | None:
    """Rows per pass ``cam`` picks when given no ``internal_batch_size``; ``None``: one pass.

    Read off the model's forward passes in one untimed call.
    """
    model = cam.forward_func
    assert isinstance(model, nn.Module)
    rows: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        cam.attribute(x, target=target, n_steps=n_steps, output_transform="softmax")
    finally:
        handle.remove()
    return None if rows[0] == x.shape[0] * (n_steps + 1) else rows[0]


def author_loop(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, n_steps: int
) -> torch.Tensor:
    """RSI-Grad-CAM with one forward/backward pass per path point (zero baseline)."""
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        previous = None
        rsi = torch.zeros((), device=x.device)
        for step in range(n_steps + 1):
            point = (step / n_steps) * x
            probs = torch.softmax(model(point), dim=1)
            score = probs.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, captured["a"])
            act = captured["a"].detach()
            if previous is not None:
                rsi = rsi + 0.5 * (previous[1] + grad) * (act - previous[0])
            previous = (act, grad)
    finally:
        handle.remove()
    weights = rsi.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * previous[0]).sum(dim=1, keepdim=True))


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` of a 1-D tensor, ties sharing their average rank."""
    order = values.argsort()
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.arange(values.numel(), dtype=torch.float64, device=values.device)
    _, groups = values.unique(return_inverse=True)
    sums = torch.zeros(int(groups.max()) + 1, dtype=torch.float64, device=values.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, groups, ranks)
    counts.index_add_(0, groups, torch.ones_like(ranks))
    return (sums / counts)[groups]


def lowest_spearman(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """The lowest per-example Spearman correlation between two batches of maps.

    Two constant maps correlate 1 when equal; a constant map against a varying one, 0.
    """
    lowest = 1.0
    for a, b in zip(maps.flatten(1).double(), reference.flatten(1).double()):
        ra, rb = _ranks(a) - (a.numel() - 1) / 2, _ranks(b) - (b.numel() - 1) / 2
        norm = float(ra.norm() * rb.norm())
        if norm == 0:  # a constant map
            lowest = min(lowest, 1.0 if torch.equal(a, b) else 0.0)
            continue
        lowest = min(lowest, float((ra * rb).sum()) / norm)
    return lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    measure.add_run_arguments(parser, quick_help="one timed repeat, no ibs row")
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument(
        "--layer", default="layer4", choices=["layer1", "layer2", "layer3", "layer4"]
    )
    args = parser.parse_args()
    device = measure.run_device(args)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    target = model(x).argmax(dim=1)
    steps = args.n_steps

    def probabilities(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inp), dim=1)

    layer = getattr(model, args.layer)
    rsi = LayerRSIGradCam(model, layer)
    layer_ig = LayerIntegratedGradients(probabilities, layer)
    grad_cam = LayerGradCam(probabilities, layer)
    methods: dict[str, Callable[[], Any]] = {
        "rsi": lambda: rsi.attribute(x, target=target, n_steps=steps, output_transform="softmax"),
        "layer_ig": lambda: layer_ig.attribute(
            x, target=target, n_steps=steps, method="riemann_trapezoid"
        ),
        "loop": lambda: author_loop(model, layer, x, target, steps),
        "grad_cam": lambda: grad_cam.attribute(x, target=target),
    }
    tolerances = {"rsi[auto 1e-2]": 1e-2, "rsi[auto 1e-3]": 1e-3}
    auto_rsi = LayerRSIGradCam(model, layer)  # its own instance: last_n_steps stays apart

    def auto(tolerance: float) -> Callable[[], Any]:
        return lambda: auto_rsi.attribute(
            x, target=target, n_steps="auto", tolerance=tolerance, max_steps=256,
            output_transform="softmax",
        )

    for name, tolerance in tolerances.items():
        methods[name] = auto(tolerance)
    rows_per_pass = default_pass_rows(rsi, x, target, steps)
    if not args.quick:
        # the same pass size for both path methods, and ours in a single pass
        methods["rsi[one pass]"] = lambda: rsi.attribute(
            x, target=target, n_steps=steps, output_transform="softmax",
            internal_batch_size=x.shape[0] * (steps + 1),
        )
        if rows_per_pass is not None:
            methods[f"layer_ig[ibs={rows_per_pass}]"] = lambda: layer_ig.attribute(
                x, target=target, n_steps=steps, method="riemann_trapezoid",
                internal_batch_size=rows_per_pass,
            )
    print(
        f"resnet18/{args.layer} batch={args.batch} {args.size}x{args.size} n_steps={steps} "
        f"device={device} threads={torch.get_num_threads()} repeats={repeats} (median)"
    )
    rows = measure.measured_rows(methods, device, repeats)
    reference = rsi.attribute(x, target=target, n_steps=256, output_transform="softmax")
    notes, quality = {}, {}
    for name in tolerances:
        maps = methods[name]()
        used = auto_rsi.last_n_steps
        assert used is not None
        quality[name] = lowest_spearman(maps, reference)
        notes[name] = (
            f"steps mean {used.double().mean():.1f} max {int(used.max())}; "
            f"spearman vs 256 steps {quality[name]:.5f}"
        )
    measure.print_table(
        rows, ["rsi", "layer_ig", "loop", "grad_cam"], notes=notes, notes_header="auto steps"
    )
    t_rsi, t_ig, t_loop = rows["rsi"].seconds, rows["layer_ig"].seconds, rows["loop"].seconds
    print(
        f"targets: rsi/layer_ig time {t_rsi / t_ig:.2f} (CPU goal <= 0.60); "
        f"loop/rsi speed-up {t_loop / t_rsi:.1f}x (CUDA goal >= 5x)"
    )
    t_auto = rows["rsi[auto 1e-2]"].seconds
    print(
        f"targets (auto 1e-2): time vs {steps} fixed steps {t_auto / t_rsi:.2f} (goal <= 0.40); "
        f"vs layer_ig {t_auto / t_ig:.2f} (goal <= 0.35); "
        f"spearman vs 256 steps {quality['rsi[auto 1e-2]']:.5f} (goal >= 0.999)"
    )
    same_size = f"layer_ig[ibs={rows_per_pass}]"
    if same_size in rows:
        print(f"at the same pass size ({rows_per_pass} rows, ours by default on CPU): "
              f"rsi/layer_ig time {t_rsi / rows[same_size].seconds:.2f}")


if __name__ == "__main__":
    main()
