"""Speed and memory of guided-gradient alignment training against its peers, both modes.

For torchvision ``resnet18(num_classes=10)`` (weights=None; also ``mobilenet_v2`` and
``efficientnet_b0`` with ``--models``), batch 16, 64x64, train mode, one SGD step each:

(a) plain cross-entropy,
(b) the straightforward composition: Captum ``GuidedBackprop`` in its own forward pass,
    then a second forward pass and ``autograd.grad(create_graph=True)`` for the plain
    gradient (BatchNorm statistics move twice; resnet18 only: Captum's guided rule
    sees ``nn.ReLU`` modules only),
(c) ``GuidedGradientRegularizer`` (exact double backprop, one shared forward pass),
(c_fd) ``GuidedGradientRegularizer(mode="finite_difference")``: first derivatives only,
(floor) the plain gradient's double backpropagation alone, without any guided target:
    the least an exact double-backprop step costs,
(p) / (p_fd) ``GradientNormPenalty(norm="l1")`` in both modes, for comparison,

printed as time per step and peak memory, with ratios to (a) and to (floor), and the
time of each finite-difference row relative to its exact row.

Time: median wall-clock time per step (synchronised on CUDA) after one warm-up step,
the variants interleaved so that load from other programs hits all alike. Peak memory:
the most memory the step's own tensors held at once, above what was held before it
(model parameters and inputs excluded; the new parameter gradients count): the CUDA
allocator peak on GPUs, the peak of live tensor-storage bytes on CPUs, measured in a
separate untimed step (see ``benchmarks/_measure.py``).

Usage::

    python benchmarks/bench_guided_regularizer.py [--quick] [--device auto|cpu|cuda] \
        [--threads N] [--models resnet18,mobilenet_v2,efficientnet_b0] [--batch 16] [--size 64]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import _measure as measure
import torch
import torch.nn.functional as F
import torchvision

VARIANTS = {
    "a": "plain cross-entropy",
    "b": "Captum GuidedBackprop + 2nd forward (create_graph)",
    "c": "GuidedGradientRegularizer (shared forward, double backprop)",
    "c_fd": "GuidedGradientRegularizer(mode='finite_difference')",
    "floor": "double backprop of the plain gradient alone (no guided target)",
    "p": "GradientNormPenalty(norm='l1') (double backprop)",
    "p_fd": "GradientNormPenalty(norm='l1', mode='finite_difference')",
}
"""``floor`` is not a way to train with the penalty: it is the cost that every exact
double-backpropagation method pays before it computes any guided gradient, so (c)
cannot be below it. The finite-difference rows can: they never differentiate twice."""
WEIGHT = 7.5e-3
EPSILON = 0.01
MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
GUIDED = ("b", "c", "c_fd")


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

    elif variant in ("c", "c_fd"):
        from captum_regularized.regularizers import GuidedGradientRegularizer

        mode = "finite_difference" if variant == "c_fd" else "double_backprop"
        reg = GuidedGradientRegularizer(model, weight=WEIGHT, mode=mode)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, penalty = reg(x, y)
            return F.cross_entropy(logits, y) + penalty

    else:
        from captum_regularized.regularizers import GradientNormPenalty

        mode = "finite_difference" if variant == "p_fd" else "double_backprop"
        pen = GradientNormPenalty(model, norm="l1", epsilon=EPSILON, mode=mode)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, penalty = pen(x, y)
            return F.cross_entropy(logits, y) + penalty

    return step


def _guided_rule_supports(name: str) -> str | None:
    """``None`` when the guided regularizer runs on the model, else why it does not."""
    from captum_regularized.regularizers import GuidedGradientRegularizer

    model = getattr(torchvision.models, name)(num_classes=10).eval()
    try:
        GuidedGradientRegularizer(model)(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    except ValueError as error:
        return str(error).split(";")[0]
    return None


def _setup(
    variant: str, device: torch.device, name: str = "resnet18", batch: int = 16, size: int = 64
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    step = _step_function(variant, model)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(x, y).backward()
        optimizer.step()

    return one_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    measure.add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--size", type=int, default=64, help="image side")
    args = parser.parse_args()
    device = measure.select_device(args.device)
    repeats = 3 if args.quick else 10
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r}; choose from {MODELS}")
        variants = [v for v in VARIANTS if name == "resnet18" or v != "b"]
        unsupported = _guided_rule_supports(name)
        if unsupported is not None:
            variants = [v for v in variants if v not in GUIDED]
        print(f"\n{name}(num_classes=10), batch {args.batch}, {args.size}x{args.size}, "
              f"train mode, device {device}, "
              f"threads {torch.get_num_threads()}, median of {repeats} interleaved steps")
        if unsupported is not None:
            print(f"(no guided rows: {unsupported})")
        steps = {v: _setup(v, device, name, args.batch, args.size) for v in variants}
        rows = measure.measured_rows(steps, device, repeats)
        notes = {v: VARIANTS[v] for v in variants}
        measure.print_table(
            rows, ["a", "floor"], label="variant", notes=notes, notes_header="description"
        )
        ratios = [
            f"{fd}/{exact} time {rows[fd].seconds / rows[exact].seconds:.2f}x, "
            f"memory {_ratio(rows[fd], rows[exact]):.2f}x"
            for fd, exact in (("c_fd", "c"), ("p_fd", "p"))
            if fd in rows
        ]
        print("finite difference vs exact: " + "; ".join(ratios))
        if "b" in rows:
            print(f"(c) is {rows['b'].seconds / rows['c'].seconds:.2f}x faster than (b)")


def _ratio(row: measure.Row, reference: measure.Row) -> float:
    if row.peak_bytes is None or not reference.peak_bytes:
        return float("nan")
    return row.peak_bytes / reference.peak_bytes


if __name__ == "__main__":
    main()
