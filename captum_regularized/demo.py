"""The main job: train a small CNN on synthetic shapes and compare attribution maps.

``captum-regularized demo`` trains :class:`~captum_regularized.models.SimpleCNN` on
:class:`~captum_regularized.datasets.SyntheticShapes`, explains held-out images with
Captum's methods and this package's, scores every map against the ground-truth masks,
and writes ``attributions.png``, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Saliency
from torch import nn
from torch.utils.data import Subset, TensorDataset

from captum_regularized.attr import LayerRSIGradCam, signed_saliency_maps
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import (
    deletion_auc,
    energy_pointing_game,
    gini_sparseness,
    gradient_alignment,
    pointing_game,
)
from captum_regularized.models import SimpleCNN, evaluate_accuracy, train_classifier
from captum_regularized.regularizers import (
    GuidedGradientRegularizer,
    NormRegularizedAdversarialLoss,
)
from captum_regularized.visualization import plot_attributions

Explainer = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""``explain(images, targets) -> {column: maps}``, maps ``(B, C, H, W)`` or ``(B, 1, H, W)``."""
SIGNED_KINDS = ("positive", "negative", "active", "inactive")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (see :data:`FULL` and :data:`QUICK`)."""

    image_size: int
    train_samples: int
    test_samples: int
    num_classes: int
    num_distractors: int
    width: int
    epochs: int
    batch_size: int
    lr: float
    figure_rows: int
    scored_examples: int
    deletion_steps: int
    finetune_epochs: int
    finetune_samples: int


FULL = DemoSettings(
    image_size=32, train_samples=4000, test_samples=1000, num_classes=10, num_distractors=2,
    width=8, epochs=5, batch_size=64, lr=1e-2, figure_rows=5, scored_examples=200,
    deletion_steps=16, finetune_epochs=1, finetune_samples=4000,
)
QUICK = DemoSettings(
    image_size=32, train_samples=2500, test_samples=200, num_classes=10, num_distractors=2,
    width=8, epochs=3, batch_size=64, lr=1e-2, figure_rows=3, scored_examples=32,
    deletion_steps=8, finetune_epochs=1, finetune_samples=256,
)
MASK_COLUMN = "ground-truth mask"
"""Title of the figure column that shows the mask of the object that decides the label."""
TEST_SEED_OFFSET = 1_000_003
"""The held-out set uses ``seed + TEST_SEED_OFFSET``: disjoint random streams."""


def attribution_methods(model: SimpleCNN) -> dict[str, Explainer]:
    """The demo's method groups: name to ``explain(images, targets) -> {column: maps}``.

    A group computes its columns together (the four signed maps share one set of class
    gradients). Every map lives on the model's device.
    """
    saliency = Saliency(model)
    guided = GuidedBackprop(model)
    grad_cam = LayerGradCam(model, model.block3)
    rsi_grad_cam = LayerRSIGradCam(model, model.block3)

    def upsampled(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return LayerAttribution.interpolate(maps, tuple(like.shape[-2:]), "bilinear")

    def signed(x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = signed_saliency_maps(model, x, target=t)
        # one tensor of inputs in, one tensor of maps out per kind
        return {
            f"{kind.capitalize()} saliency": cast(torch.Tensor, maps[kind])
            for kind in SIGNED_KINDS
        }

    return {
        "Saliency": lambda x, t: {"Saliency": saliency.attribute(x, target=t, abs=True)},
        "GuidedBackprop": lambda x, t: {"GuidedBackprop": guided.attribute(x, target=t)},
        "Grad-CAM": lambda x, t: {"Grad-CAM": upsampled(grad_cam.attribute(x, target=t), x)},
        "signed saliency": signed,
        "RSI-Grad-CAM": lambda x, t: {
            "RSI-Grad-CAM": upsampled(
                rsi_grad_cam.attribute(
                    x, target=t, n_steps=32, output_transform="softmax", internal_batch_size=1024
                ),
                x,
            )
        },
    }


CONTROL_TRAINING = "plain cross-entropy"
REGULARIZED_TRAINING: dict[str, Callable[[nn.Module], Callable | None]] = {
    CONTROL_TRAINING: lambda m: None,
    "guided alignment": lambda m: GuidedGradientRegularizer(m, weight=0.15),
    "l1 adversarial": lambda m: NormRegularizedAdversarialLoss(m, norm="l1", epsilon=0.005),
}
"""Losses the demo fine-tunes the trained model with; plain cross-entropy is the control."""


def _fine_tuned(
    model: nn.Module, train_set: TensorDataset, settings: DemoSettings, device: str,
    seed: int, progress: bool,
) -> dict[str, nn.Module]:
    """Copies of the trained model, each fine-tuned with one regularizer."""
    subset = Subset(train_set, range(min(settings.finetune_samples, len(train_set))))
    tuned = {}
    for name, make_loss in REGULARIZED_TRAINING.items():
        student = copy.deepcopy(model).train()
        train_classifier(
            student, subset, epochs=settings.finetune_epochs, batch_size=settings.batch_size,
            lr=settings.lr / 3, device=device, loss=make_loss(student), progress=progress,
            seed=seed + 1,
        )
        tuned[name] = student.eval()
    return tuned


def _score_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    maps: torch.Tensor,
    settings: DemoSettings,
) -> dict[str, float]:
    return {
        "energy_in_mask": float(energy_pointing_game(maps, masks).mean()),
        "pointing_game": float(pointing_game(maps, masks).mean()),
        "deletion_auc": float(
            deletion_auc(model, images, maps, target=targets, steps=settings.deletion_steps).mean()
        ),
        "gini": float(gini_sparseness(maps).mean()),
    }


def _figure_rows(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the first examples with distinct labels (then any), ``count`` of them."""
    chosen: list[int] = []
    seen: set[int] = set()
    for index, label in enumerate(labels.tolist()):
        if label not in seen:
            chosen.append(index)
            seen.add(label)
        if len(chosen) == count:
            break
    return torch.tensor(chosen)


def _write_report(out: Path, results: dict) -> None:
    lines = [
        "# captum-regularized demo",
        "",
        f"SimpleCNN trained on SyntheticShapes ({results['settings']['image_size']} px, "
        f"{results['settings']['num_classes']} classes, "
        f"{results['settings']['num_distractors']} distractors) in "
        f"{results['train_seconds']:.1f} s on {results['device']}: held-out accuracy "
        f"**{100 * results['accuracy']:.1f} %**.",
        "",
        "![attribution maps](attributions.png)",
        "",
        f"Scores over {results['settings']['scored_examples']} held-out images (label as target). "
        "Energy in mask: share of positive attribution inside the ground-truth mask (higher "
        "is better); pointing game: the map's maximum falls in the mask; deletion AUC: "
        "target probability while the top pixels are removed (lower is better); Gini: "
        "sparseness of the map (higher is sparser).",
        "",
        "| method | energy in mask | pointing game | deletion AUC | Gini | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, scores in results["methods"].items():
        lines.append(
            f"| {name} | {scores['energy_in_mask']:.3f} | {scores['pointing_game']:.3f} | "
            f"{scores['deletion_auc']:.3f} | {scores['gini']:.3f} | {scores['seconds']:.2f} |"
        )
    lines += [
        "",
        "## Training-side losses",
        "",
        f"The trained model, fine-tuned for {results['settings']['finetune_epochs']} more "
        f"epoch(s) on {results['settings']['finetune_samples']} training images with each "
        "loss (plain cross-entropy is the control). Gradient alignment: cosine between the "
        "plain input gradient and the guided-backprop gradient; Gini and energy in mask are "
        "measured on the plain Saliency map. The figure's last columns show these maps.",
        "",
        "| model | accuracy | gradient alignment | Saliency Gini | Saliency energy in mask |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["training"].items():
        lines.append(
            f"| {name} | {100 * row['accuracy']:.1f} % | {row['gradient_alignment']:.3f} | "
            f"{row['saliency_gini']:.3f} | {row['saliency_energy_in_mask']:.3f} |"
        )
    lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train, explain, score and write ``attributions.png``, ``metrics.json``, ``report.md``.

    Parameters
    ----------
    out : Path
        Existing, writable folder.
    quick : bool
        Use :data:`QUICK` (seconds) instead of :data:`FULL`.
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the data, the initialisation and the training order.
    progress : bool
        Show training progress bars.

    Returns
    -------
    dict
        What ``metrics.json`` holds.
    """
    started = time.perf_counter()
    settings = QUICK if quick else FULL
    torch.manual_seed(seed)
    data_args = dict(
        image_size=settings.image_size,
        num_classes=settings.num_classes,
        num_distractors=settings.num_distractors,
    )
    train_set = SyntheticShapes(settings.train_samples, seed=seed, **data_args).materialize()
    test = SyntheticShapes(settings.test_samples, seed=seed + TEST_SEED_OFFSET, **data_args)
    test_images, test_labels, test_masks = test.tensors()

    model = SimpleCNN(settings.num_classes, width=settings.width)
    train_started = time.perf_counter()
    history = train_classifier(
        model, train_set, epochs=settings.epochs, batch_size=settings.batch_size,
        lr=settings.lr, device=device, progress=progress, seed=seed,
    )
    train_seconds = time.perf_counter() - train_started
    accuracy = evaluate_accuracy(model, TensorDataset(test_images, test_labels), device=device)
    model.eval()

    count = settings.scored_examples
    images = test_images[:count].to(device)
    labels = test_labels[:count].to(device)
    masks = test_masks[:count].to(device)
    rows = _figure_rows(labels.cpu(), settings.figure_rows).to(device)

    # the figure's columns: the input (mask outlined), the mask itself, one per method
    figure_maps: dict[str, torch.Tensor] = {MASK_COLUMN: masks[rows].float()}
    scores: dict[str, dict[str, float]] = {}
    for explain in attribution_methods(model).values():
        method_started = time.perf_counter()
        columns = explain(images, labels)
        seconds = (time.perf_counter() - method_started) / len(columns)
        for name, maps in columns.items():
            maps = maps.detach()
            scores[name] = {**_score_maps(model, images, labels, masks, maps, settings),
                            "seconds": seconds}
            figure_maps[name] = maps[rows]

    training: dict[str, dict[str, float]] = {}
    for name, student in _fine_tuned(model, train_set, settings, device, seed, progress).items():
        student.eval()
        plain = Saliency(student).attribute(images, target=labels, abs=True).detach()
        training[name] = {
            "accuracy": evaluate_accuracy(
                student, TensorDataset(test_images, test_labels), device=device
            ),
            "gradient_alignment": float(gradient_alignment(student, images, labels).mean()),
            "saliency_gini": float(gini_sparseness(plain).mean()),
            "saliency_energy_in_mask": float(energy_pointing_game(plain, masks).mean()),
        }
        if name != CONTROL_TRAINING:
            figure_maps[f"Saliency, {name}"] = plain[rows]

    figure, _ = plot_attributions(
        images[rows], figure_maps, mask=masks[rows],
        row_labels=[test.shape_names[int(i)] for i in labels[rows].tolist()],
    )
    figure.savefig(out / "attributions.png", dpi=110, bbox_inches="tight")
    plt.close(figure)

    results = {
        "settings": asdict(settings),
        "quick": quick,
        "seed": seed,
        "device": device,
        "accuracy": accuracy,
        "train_seconds": train_seconds,
        "history": history,
        "methods": scores,
        "training": training,
        "figure_columns": ["input", *figure_maps],
    }
    results["total_seconds"] = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    _write_report(out, results)
    return results
