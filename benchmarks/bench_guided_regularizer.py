"""Speed and memory of guided-gradient alignment training against its peers.

For torchvision ``resnet18(num_classes=10)`` (weights=None), batch 16, 64x64, train
mode, one SGD step each:

(a) plain cross-entropy,
(b) the straightforward composition: Captum ``GuidedBackprop`` in its own forward pass,
    then a second forward pass and ``autograd.grad(create_graph=True)`` for the plain
    gradient (BatchNorm statistics move twice),
(c) ``GuidedGradientRegularizer`` (one shared forward pass),
(floor) the plain gradient's double backpropagation alone, without any guided target:
    the least an exact double-backprop step costs,

printed as time per step and peak memory, with ratios to (a).

Time: median wall-clock time per step (synchronised on CUDA) after one warm-up step,
the variants interleaved so that load from other programs hits all alike. Peak memory:
the most memory the step's own tensors held at once, above what was held before it
(model parameters and inputs excluded; the new parameter gradients count): the CUDA
allocator peak on GPUs, the peak of live tensor-storage bytes on CPUs, measured in a
separate untimed step (see ``benchmarks/_measure.py``).

Usage::

    python benchmarks/bench_guided_regularizer.py [--quick] [--device auto|cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from _measure import (
    Row,
    add_device_argument,
    median_seconds,
    peak_bytes,
    print_table,
    select_device,
)

VARIANTS = {
    "a": "plain cross-entropy",
    "b": "Captum GuidedBackprop + 2nd forward (create_graph)",
    "c": "GuidedGradientRegularizer (shared forward)",
    "floor": "double backprop of the plain gradient alone (no guided target)",
}
"""``floor`` is not a way to train with the penalty: it is the cost that every exact
double-backpropagation method pays before it computes any guided gradient, so (c)
cannot be below it."""
WEIGHT = 7.5e-3


def _cosine_penalty(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
    return WEIGHT * (1 - F.cosine_similarity(g.flatten(1), g_guided.flatten(1))).mean()


def _step_function(
    variant: str, model: torch.nn.Module
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if variant == "a":

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(x), y)

    elif variant == "b":
        from captum.attr import GuidedBackprop

        guided_backprop = GuidedBackprop(model)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                guided = guided_backprop.attribute(x, target=y).detach()
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
            (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), leaf, create_graph=True)
            return F.cross_entropy(logits, y) + _cosine_penalty(g, guided)

    elif variant == "floor":

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
            (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), leaf, create_graph=True)
            return F.cross_entropy(logits, y) + WEIGHT * g.square().mean()

    else:
        from captum_regularized.regularizers import GuidedGradientRegularizer

        reg = GuidedGradientRegularizer(model, weight=WEIGHT)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, penalty = reg(x, y)
            return F.cross_entropy(logits, y) + penalty

    return step


def _setup(variant: str, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(16, 3, 64, 64, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    step = _step_function(variant, model)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(x, y).backward()
        optimizer.step()

    return one_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    device = select_device(args.device)
    repeats = 3 if args.quick else 10
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"resnet18(num_classes=10), batch 16, 64x64, train mode, device {device}, "
          f"threads {torch.get_num_threads()}, median of {repeats} interleaved steps")
    steps = {variant: _setup(variant, device) for variant in VARIANTS}
    times = median_seconds(steps, device, repeats)
    rows = {v: Row(times[v], peak_bytes(step, device)) for v, step in steps.items()}
    print_table(rows, ["a"], label="variant", notes=VARIANTS, notes_header="description")
    print(f"(c) is {times['b'] / times['c']:.2f}x faster than (b)")


if __name__ == "__main__":
    main()
