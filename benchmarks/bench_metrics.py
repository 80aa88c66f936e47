"""Speed and peak memory of the batched deletion and allegiance metrics against loops.

Peers, on the same model, images and maps:

* ``loop``: the straightforward implementation, as RISE's reference code does it: one
  example at a time, one forward pass per step with a batch of one.
* ``steps batched``: one example at a time, all of its steps in one forward pass (the
  common "vectorised per image" variant).
* ``ours[ibs=N]``: :func:`~captum_regularized.metrics.deletion_auc`, steps of several
  examples per forward pass (``internal_batch_size=N`` images at a time).

Every row is checked against ``loop`` (same AUCs) before it is timed. The ratios
``t/ours[ibs=128]`` are ``row time / our time`` (for a peer: higher = we are faster);
``m/ours[ibs=128]`` likewise for peak memory.

Time: median wall-clock time per call (synchronised on CUDA) after one warm-up, the
methods interleaved. Peak memory: the most memory the call's own tensors held at once,
above what was held before it (model parameters and inputs excluded): the CUDA
allocator peak on GPUs, the peak of live tensor-storage bytes on CPUs, measured in a
separate untimed call (see ``benchmarks/_measure.py``).

Run ``python benchmarks/bench_metrics.py [--device auto|cpu|cuda] [--quick]`` from the
repository root with ``PYTHONPATH=.`` (or the package installed). The default is a
ResNet-18 on 8 images of 32x32 with 16 steps (about two minutes on a 2-core CPU);
``--quick`` uses the small ``SimpleCNN`` instead (under a minute). On a GPU, raise the
sizes in ``main`` to see the batching pay off.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import _measure as measure
import torch
import torch.nn.functional as F
import torchvision

from captum_regularized.metrics import allegiance_deletion_auc, deletion_auc
from captum_regularized.models import SimpleCNN


@torch.no_grad()
def deletion_loop(
    model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, steps: int, batched_steps: bool
) -> torch.Tensor:
    """RISE-style reference: per example; per step (or all steps in one batch)."""
    batch, _, height, width = x.shape
    pixels = height * width
    aucs = []
    for b in range(batch):
        target = model(x[b:b + 1]).argmax(1)
        order = torch.sort(maps[b].flatten(), descending=True, stable=True).indices
        images = []
        for k in range(steps + 1):
            image = x[b].clone().view(x.shape[1], -1)
            image[:, order[: k * pixels // steps]] = 0
            images.append(image.view_as(x[b]))
        if batched_steps:
            scores = F.softmax(model(torch.stack(images)), 1)[:, target[0]]
        else:
            scores = torch.stack([F.softmax(model(i[None]), 1)[0, target[0]] for i in images])
        aucs.append(torch.trapezoid(scores, dx=1 / steps))
    return torch.stack(aucs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_device_argument(parser)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = measure.select_device(args.device)
    torch.manual_seed(0)
    if args.quick:
        model, size, batch, steps, repeats = SimpleCNN(10, width=8), 32, 8, 16, 3
    else:
        model = torchvision.models.resnet18(num_classes=10, weights=None)
        size, batch, steps, repeats = 32, 8, 16, 3
    model = model.to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    maps = torch.rand(batch, size, size, device=device)

    peers: dict[str, Callable[[], torch.Tensor]] = {
        "loop": lambda: deletion_loop(model, x, maps, steps, False),
        "steps batched": lambda: deletion_loop(model, x, maps, steps, True),
        "ours[ibs=32]": lambda: deletion_auc(model, x, maps, steps=steps, internal_batch_size=32),
        "ours[ibs=128]": lambda: deletion_auc(
            model, x, maps, steps=steps, internal_batch_size=128
        ),
    }
    reference = peers["loop"]()
    for name, fn in peers.items():
        torch.testing.assert_close(fn(), reference, atol=1e-4, rtol=1e-3, msg=name)

    print(f"device={device} model={type(model).__name__} images={batch}x3x{size}x{size} "
          f"steps={steps} (median of {repeats})")
    rows = measure.measured_rows(peers, device, repeats)
    measure.print_table(rows, ["ours[ibs=128]"], label="deletion")
    allegiance = measure.measured_rows(
        {"allegiance": lambda: allegiance_deletion_auc(model, x, maps).auc}, device, repeats,
        memory=False,
    )["allegiance"]
    print(f"allegiance (13 fractions, ours): {allegiance.seconds * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
