"""Speed and memory of guided-gradient alignment training against its peers.

For torchvision ``resnet18(num_classes=10)`` (weights=None), batch 16, 64x64, train
mode, one SGD step each:

(a) plain cross-entropy,
(b) the straightforward composition: Captum ``GuidedBackprop`` in its own forward pass,
    then a second forward pass and ``autograd.grad(create_graph=True)`` for the plain
    gradient (BatchNorm statistics move twice),
(c) ``GuidedGradientRegularizer`` (one shared forward pass),

printed as time per step and peak memory, with ratios to (a). Every variant runs in its
own subprocess for its peak memory, so that the CPU peak (``ru_maxrss``) is its own (on
CUDA: ``torch.cuda.max_memory_allocated``); the times are medians of steps run in one
process with the variants interleaved, so that load from other programs hits all alike.

Usage::

    python benchmarks/bench_guided_regularizer.py [--quick] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

VARIANTS = {
    "a": "plain cross-entropy",
    "b": "Captum GuidedBackprop + 2nd forward (create_graph)",
    "c": "GuidedGradientRegularizer (shared forward)",
}
WEIGHT = 7.5e-3


def _cosine_penalty(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
    return WEIGHT * (1 - F.cosine_similarity(g.flatten(1), g_guided.flatten(1))).mean()


def _step_function(variant: str, model: torch.nn.Module):
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

    else:
        from captum_regularized.regularizers import GuidedGradientRegularizer

        reg = GuidedGradientRegularizer(model, weight=WEIGHT)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, penalty = reg(x, y)
            return F.cross_entropy(logits, y) + penalty

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(variant: str, device: torch.device):
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


def peak_memory_mib(variant: str, device: torch.device, steps: int) -> float:
    """Peak memory of ``steps`` optimizer steps above the state after model creation."""
    one_step = _setup(variant, device)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024


def seconds_per_step(device: torch.device, rounds: int, warmup: int) -> dict[str, float]:
    """Median time per step, the variants interleaved so that load changes hit all alike."""
    steps = {variant: _setup(variant, device) for variant in VARIANTS}
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(warmup + rounds):
        for variant, one_step in steps.items():
            _sync(device)
            start = time.perf_counter()
            one_step()
            _sync(device)
            if round_index >= warmup:
                times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(values) for variant, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rounds, warmup = (3, 1) if args.quick else (10, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:  # child process: the peak memory of one variant, JSON out
        print(json.dumps(peak_memory_mib(args.variant, device, warmup + 1)))
        return
    peaks = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, "--device", str(device)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])
    seconds = seconds_per_step(device, rounds, warmup)
    results = {v: {"seconds": seconds[v], "peak_mib": peaks[v]} for v in VARIANTS}
    steps = rounds
    print(f"resnet18(num_classes=10), batch 16, 64x64, train mode, device {device}, "
          f"threads {torch.get_num_threads() if not args.threads else args.threads}, "
          f"median of {steps} interleaved steps")
    print(f"{'variant':<55} {'s/step':>8} {'x(a)':>6} {'peak MiB':>9} {'x(a)':>6}")
    base = results["a"]
    for variant, name in VARIANTS.items():
        r = results[variant]
        print(
            f"({variant}) {name:<51} {r['seconds']:8.3f} {r['seconds'] / base['seconds']:6.2f} "
            f"{r['peak_mib']:9.1f} {r['peak_mib'] / max(base['peak_mib'], 1e-9):6.2f}"
        )
    print(f"(c) is {results['b']['seconds'] / results['c']['seconds']:.2f}x faster than (b)")


if __name__ == "__main__":
    main()
