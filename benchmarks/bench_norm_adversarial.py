"""Training-step cost of norm-regularized adversarial training, as ratios to plain training.

For ``resnet18(num_classes=10)`` (random weights), batch 16, 64x64 images, one
training step (forward, backward, SGD update) is timed for

* plain cross-entropy training (the unit of every ratio);
* :class:`NormRegularizedAdversarialLoss` for every norm with ``steps=1`` (closed form)
  and ``steps=7`` (iterative, last iterate: the default; ``gaze`` has only the closed
  form), ``l1`` with ``steps=7, select_iterate="best"`` (one more forward pass), and
  ``l1`` with the authors' inner loop (``start="zero"``, ``step_size=0.3 * epsilon``,
  ``update_batchnorm=True``: the same ``7`` passes);
* :class:`GradientNormPenalty` for every norm (double back-propagation);
* the peers: Captum's ``captum.robust.FGSM`` and ``captum.robust.PGD`` (L-inf, same
  radius and steps), each followed by the same outer training step.

Targets: ``steps=1`` at most 2.2x plain, ``steps=k`` at most ``(k + 1.2)x`` plain,
``l1`` (default settings) no slower than Captum's peer with the same number of steps:
both run ``k`` forward and backward passes before the outer step.

Time: median time per step after one warm-up step, the configurations interleaved.
On GPUs it is the synchronised wall-clock time; on CPUs it is the process's CPU time
(one thread unless ``--threads``), so that other jobs on a shared machine, which
stretch wall time, do not distort the ratios. Peak memory: the most memory the step's
own tensors held at once, above what was held before it (model parameters and inputs
excluded; the new parameter gradients count): the CUDA allocator peak on GPUs, the
peak of live tensor-storage bytes on CPUs, measured in a separate untimed step (see
``benchmarks/_measure.py``).

Run ``python benchmarks/bench_norm_adversarial.py [--quick] [--device auto|cpu|cuda]``
(``auto``, the default, is CUDA when present). Timings on a shared machine are noisy:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import _measure as measure
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
                train_on(lambda adv=adv, extra=extra: adv(images, labels, **extra).loss),
                2.2 if steps == 1 else steps + 1.2,
            )
    best = NormRegularizedAdversarialLoss(model, **NORM_SETTINGS["l1"], steps=STEPS,
                                          input_range=(0.0, 1.0), select_iterate="best")
    configs[f"adversarial l1 steps={STEPS} best"] = (
        train_on(lambda: best(images, labels).loss), STEPS + 1.2
    )
    authors = NormRegularizedAdversarialLoss(
        model, **NORM_SETTINGS["l1"], steps=STEPS, step_size=0.3 * EPSILON, start="zero",
        update_batchnorm=True, input_range=(0.0, 1.0),
    )
    configs[f"adversarial l1 steps={STEPS} authors"] = (
        train_on(lambda: authors(images, labels).loss), STEPS + 1.2
    )
    for name, settings in NORM_SETTINGS.items():
        pen = GradientNormPenalty(model, **settings)
        extra = {"mask": mask} if name == "gaze" else {}

        def penalised(pen: GradientNormPenalty = pen, extra: dict = extra) -> torch.Tensor:
            return pen(images, labels, **extra).loss

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
    measure.add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
    torch.set_num_threads(args.threads)
    device = measure.select_device(args.device)
    configs = _steps(device)
    reps = 3 if args.quick else 7
    clock = "wall" if device.type == "cuda" else "cpu"
    print(f"resnet18(num_classes={CLASSES}), batch {BATCH}, {SIZE}x{SIZE}, {device}, "
          f"{torch.get_num_threads()} threads, median of {reps} steps, {clock} time")
    step_of = {name: step for name, (step, _) in configs.items()}
    rows = measure.measured_rows(step_of, device, reps, clock=clock)
    targets = {
        name: f"<={target:.1f}" for name, (_, target) in configs.items() if target is not None
    }
    measure.print_table(
        rows, ["plain"], label="configuration", notes=targets, notes_header="target"
    )
    for ours, peer_name in [
        ("adversarial l1 steps=1", "captum FGSM (peer, steps=1)"),
        (f"adversarial l1 steps={STEPS}", f"captum PGD (peer, steps={STEPS})"),
        (f"adversarial l1 steps={STEPS} best", f"captum PGD (peer, steps={STEPS})"),
        (f"adversarial l1 steps={STEPS} authors", f"captum PGD (peer, steps={STEPS})"),
    ]:
        target = "" if ours.endswith("best") else " (target <=1.00x)"
        print(f"{ours.removeprefix('adversarial ')} vs {peer_name}: "
              f"{rows[ours].seconds / rows[peer_name].seconds:.2f}x its time{target}")


if __name__ == "__main__":
    main()
