"""Training-step cost of norm-regularized adversarial training, as ratios to plain training.

For ``resnet18(num_classes=10)`` (random weights), batch 16, 64x64 images, one
training step (forward, backward, SGD update) is timed for

* plain cross-entropy training (the unit of every ratio);
* :class:`NormRegularizedAdversarialLoss` for every norm with ``steps=1`` (closed form)
  and ``steps=7`` (iterative; ``gaze`` has only the closed form);
* :class:`GradientNormPenalty` for every norm (double back-propagation);
* the peers: Captum's ``captum.robust.FGSM`` and ``captum.robust.PGD`` (L-inf, same
  radius and steps), each followed by the same outer training step.

Targets: ``steps=1`` at most 2.2x plain, ``steps=k`` at most ``(k + 1.2)x`` plain,
``l1`` no slower than Captum's peer with the same number of steps.

On CPUs the step time is the process's CPU time (one thread unless ``--threads``),
so other jobs on a shared machine do not distort the ratios; on GPUs it is the
synchronised wall-clock time. Peak memory is the peak allocated CUDA memory during
the step on GPUs and, on CPUs, the peak resident-set growth during the step, sampled
every 0.2 ms in a child process that runs with a fixed glibc mmap threshold (so freed
tensors leave the resident set at once). Both are relative to the memory in use
before the step.

Run ``python benchmarks/bench_norm_adversarial.py [--quick] [--device cpu|cuda]``
(the device defaults to CUDA when present). Timings on a shared machine are noisy:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from captum.robust import FGSM, PGD

from captum_regularized.regularizers import GradientNormPenalty, NormRegularizedAdversarialLoss

BATCH, SIZE, CLASSES, STEPS = 16, 64, 10, 7
EPSILON = 2 / 255
NORM_SETTINGS = {
    "l1": {"norm": "l1", "epsilon": EPSILON},
    "elastic_net": {"norm": "elastic_net", "epsilon": EPSILON, "epsilon2": 0.01},
    "group": {"norm": "group", "epsilon": 0.05, "group_size": 8},
    "gaze": {"norm": "gaze", "epsilon": 0.05},
}
_MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_memory(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory growth (bytes) while ``step`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    before = _resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step()
    done.set()
    sampler.join()
    return float(max(peak[0], _resident_bytes()) - before)


def _timed(step: Callable[[], None], device: torch.device, reps: int) -> float:
    """Median seconds per step (after one warm-up step).

    CUDA steps are timed by the wall clock (synchronised); CPU steps by the process's
    CPU time, which other processes on a shared machine do not inflate.
    """
    step()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def _memory_in_child(args: argparse.Namespace) -> dict[str, float]:
    """CPU peak memory of every configuration, measured in a child process.

    The child runs with a fixed glibc mmap threshold (freed tensors leave the resident
    set at once, so resident-set growth tracks the allocations); that setting slows
    allocation down, which is why the timings are taken in this process instead.
    """
    if not os.path.exists("/proc/self/statm"):
        return {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, **{_MMAP_ENV: "131072"})
    command = [sys.executable, os.path.abspath(__file__), "--memory-child",
               "--threads", str(args.threads), "--device", "cpu"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _steps(device: torch.device) -> dict[str, tuple[Callable[[], None], float | None]]:
    """Every configuration's training step and its time target (x plain), by name."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=CLASSES).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(BATCH, 3, SIZE, SIZE, device=device)
    labels = torch.randint(0, CLASSES, (BATCH,), device=device)
    mask = (torch.rand(BATCH, 1, SIZE, SIZE, device=device) > 0.7).float()

    def train_on(loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_of().backward()
            optimizer.step()

        return step

    configs: dict[str, tuple[Callable[[], None], float | None]] = {
        "plain": (train_on(lambda: F.cross_entropy(model(images), labels)), None)
    }
    for name, settings in NORM_SETTINGS.items():
        extra = {"mask": mask} if name == "gaze" else {}
        for steps in (1, STEPS) if name != "gaze" else (1,):
            adv = NormRegularizedAdversarialLoss(model, **settings, steps=steps,
                                                 input_range=(0.0, 1.0))
            configs[f"adversarial {name} steps={steps}"] = (
                train_on(lambda adv=adv, extra=extra: adv(images, labels, **extra)),
                2.2 if steps == 1 else steps + 1.2,
            )
    for name, settings in NORM_SETTINGS.items():
        pen = GradientNormPenalty(model, **settings)
        extra = {"mask": mask} if name == "gaze" else {}

        def penalised(pen: GradientNormPenalty = pen, extra: dict = extra) -> torch.Tensor:
            logits, penalty = pen(images, labels, **extra)
            return F.cross_entropy(logits, labels) + penalty

        configs[f"penalty {name}"] = (train_on(penalised), None)
    fgsm = FGSM(model, lower_bound=0.0, upper_bound=1.0)
    pgd = PGD(model, lower_bound=0.0, upper_bound=1.0)
    configs["captum FGSM (peer, steps=1)"] = (
        train_on(lambda: F.cross_entropy(
            model(fgsm.perturb(images, epsilon=EPSILON, target=labels)), labels)),
        None,
    )
    configs[f"captum PGD (peer, steps={STEPS})"] = (
        train_on(lambda: F.cross_entropy(model(pgd.perturb(
            images, radius=EPSILON, step_size=2.5 * EPSILON / STEPS, step_num=STEPS,
            target=labels)), labels)),
        None,
    )
    return configs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed repetitions, not 7")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    configs = _steps(device)
    if args.memory_child:
        memory = {}
        for name, (step, _) in configs.items():
            step()
            memory[name] = _peak_memory(step, device)
        print(json.dumps(memory))
        return
    reps = 3 if args.quick else 7
    clock = "wall" if device.type == "cuda" else "CPU"
    print(f"resnet18(num_classes={CLASSES}), batch {BATCH}, {SIZE}x{SIZE}, {device}, "
          f"{torch.get_num_threads()} threads, median of {reps} steps, {clock} time")
    times = {name: _timed(step, device, reps) for name, (step, _) in configs.items()}
    if device.type == "cuda":
        memory = {name: _peak_memory(step, device) for name, (step, _) in configs.items()}
    else:
        memory = _memory_in_child(args)
    plain_time, plain_memory = times["plain"], memory.get("plain", float("nan"))
    print(f"{'configuration':34s} {'ms/step':>9s} {'x plain':>8s} {'target':>7s} "
          f"{'peak MB':>8s} {'x plain':>8s}")
    for name, seconds in times.items():
        target = configs[name][1]
        target_text = f"<={target:.1f}" if target is not None else ""
        peak = memory.get(name, float("nan"))
        print(f"{name:34s} {1e3 * seconds:9.1f} {seconds / plain_time:8.2f} {target_text:>7s} "
              f"{peak / 2**20:8.1f} {peak / plain_memory:8.2f}")
    for steps in (1, STEPS):
        ours = times[f"adversarial l1 steps={steps}"]
        peer_name = (
            "captum FGSM (peer, steps=1)" if steps == 1 else f"captum PGD (peer, steps={STEPS})"
        )
        print(f"l1 steps={steps} vs {peer_name}: {ours / times[peer_name]:.2f}x its time")


if __name__ == "__main__":
    main()
