"""The main job: train a small CNN on synthetic shapes and compare attribution maps.

``captum-regularized demo`` trains :class:`~captum_regularized.models.SimpleCNN` on
:class:`~captum_regularized.datasets.SyntheticShapes`, explains held-out images with
Captum's methods and this package's, scores every map against the ground-truth masks,
and writes ``attributions.png``, ``metrics.json`` and ``report.md``.

The demo is one configuration of the reproduction study's machinery: its sizes are a
:class:`~captum_regularized.study.StudySettings`, its data come from the study's
per-seed data (:class:`~captum_regularized.study.study_data.StudyData`), its model is
the study's ``simple_cnn`` recipe trained by the study's ``ModelZoo``, and its maps are
scored and drawn with the study's helpers (:mod:`~captum_regularized.study.map_scores`,
:mod:`~captum_regularized.study.figures`). What is its own: the set of methods, the
fine-tuning with each training loss, and the report.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from captum.attr import GuidedBackprop, LayerGradCam, Saliency
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from captum_regularized.attr import LayerRSIGradCam, signed_saliency_maps
from captum_regularized.datasets.synthetic_shapes import CONFIGURATIONS
from captum_regularized.metrics import (
    deletion_auc,
    energy_pointing_game,
    gini_sparseness,
    gradient_alignment,
)
from captum_regularized.models import (
    LossHook,
    SimpleCNN,
    evaluate_accuracy,
    train_classifier,
)
from captum_regularized.regularizers import (
    GuidedGradientRegularizer,
    NormRegularizedAdversarialLoss,
)
from captum_regularized.study.figures import save_maps_figure
from captum_regularized.study.map_scores import mask_scores, upsampled
from captum_regularized.study.model_zoo import ModelZoo
from captum_regularized.study.settings import FULL as STUDY_FULL
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import StudyData

__all__ = [
    "CONTROL_TRAINING",
    "DEMO_FULL",
    "DEMO_QUICK",
    "MASK_COLUMN",
    "REGULARIZED_TRAINING",
    "DemoSettings",
    "Explainer",
    "attribution_methods",
    "run_demo",
]

Explainer = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""``explain(images, targets) -> {column: maps}``, maps ``(B, C, H, W)`` or ``(B, 1, H, W)``."""
SIGNED_KINDS = ("positive", "negative", "active", "inactive")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (see :data:`DEMO_FULL` and :data:`DEMO_QUICK`).

    Attributes
    ----------
    study : StudySettings
        Data, training and scoring sizes, read as the study reads them (one seed; the
        ``"standard"`` synthetic configuration, two distractors):
        ``eval_examples`` images are explained and scored, ``perturbation_steps`` are the
        deletion curve's steps, ``figure_rows`` the figure's rows.
    finetune_epochs, finetune_samples : int
        The fine-tuning of the trained model with each training loss.

    Examples
    --------
    >>> DEMO_QUICK.record()["scored_examples"] == DEMO_QUICK.study.eval_examples
    True
    """

    study: StudySettings
    finetune_epochs: int
    finetune_samples: int

    def record(self) -> dict[str, Any]:
        """The sizes as ``metrics.json`` and the report name them."""
        s = self.study
        return {
            "image_size": s.image_size,
            "train_samples": s.synthetic_train_samples,
            "test_samples": s.test_samples,
            "num_classes": s.num_classes,
            "num_distractors": CONFIGURATIONS[s.synthetic_configuration]["num_distractors"],
            "width": s.width,
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "figure_rows": s.figure_rows,
            "scored_examples": s.eval_examples,
            "deletion_steps": s.perturbation_steps,
            "finetune_epochs": self.finetune_epochs,
            "finetune_samples": self.finetune_samples,
        }


DEMO_FULL = DemoSettings(
    replace(
        STUDY_FULL, seeds=1, synthetic_configuration="standard", image_size=32,
        num_classes=10, width=8, batch_size=64, lr=1e-2,
        synthetic_train_samples=4000, test_samples=1000, epochs=5, eval_examples=200,
        perturbation_steps=16, figure_rows=5,
    ),
    finetune_epochs=1,
    finetune_samples=4000,
)
"""``captum-regularized demo``, the run the README shows."""
DEMO_QUICK = DemoSettings(
    replace(
        DEMO_FULL.study, synthetic_train_samples=2500, test_samples=200, epochs=3, eval_examples=32,
        perturbation_steps=8, figure_rows=3,
    ),
    finetune_epochs=1,
    finetune_samples=256,
)
"""``captum-regularized demo --quick`` (about 45 s on 2 idle CPU cores)."""
MASK_COLUMN = "ground-truth mask"
"""Title of the figure column that shows the mask of the object that decides the label."""


def attribution_methods(model: SimpleCNN) -> dict[str, Explainer]:
    """The demo's method groups: name to ``explain(images, targets) -> {column: maps}``.

    A group computes its columns together (the four signed maps share one set of class
    gradients). Every map lives on the model's device.

    Examples
    --------
    >>> list(attribution_methods(SimpleCNN(3, width=2)))
    ['Saliency', 'GuidedBackprop', 'Grad-CAM', 'signed saliency', 'RSI-Grad-CAM']
    """
    saliency = Saliency(model)
    guided = GuidedBackprop(model)
    grad_cam = LayerGradCam(model, model.block3)
    rsi_grad_cam = LayerRSIGradCam(model, model.block3)

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
REGULARIZED_TRAINING: dict[str, Callable[[nn.Module], LossHook | None]] = {
    CONTROL_TRAINING: lambda m: None,
    "guided alignment": lambda m: GuidedGradientRegularizer(m, weight=0.15),
    "l1 adversarial": lambda m: NormRegularizedAdversarialLoss(m, norm="l1", epsilon=0.005),
}
"""Losses the demo fine-tunes the trained model with; plain cross-entropy is the control."""


def _loss_name(loss: LossHook | None) -> str:
    """The training loss of a fine-tune, named for its progress line.

    Examples
    --------
    >>> _loss_name(None)
    'cross-entropy'
    >>> model = SimpleCNN(3, width=2)
    >>> _loss_name(GuidedGradientRegularizer(model))
    'cross-entropy + GuidedGradientRegularizer'
    >>> _loss_name(NormRegularizedAdversarialLoss(model))
    'NormRegularizedAdversarialLoss'
    """
    if loss is None:
        return "cross-entropy"
    if isinstance(loss, NormRegularizedAdversarialLoss):  # trains on x + delta only
        return type(loss).__name__
    return f"cross-entropy + {type(loss).__name__}"


def _fine_tuned(
    model: nn.Module, train_set: Dataset, settings: DemoSettings, device: str,
    seed: int, progress: bool,
) -> dict[str, nn.Module]:
    """Copies of the trained model, each fine-tuned with one regularizer."""
    size = len(train_set)  # type: ignore[arg-type]
    subset = Subset(train_set, range(min(settings.finetune_samples, size)))
    s = settings.study
    tuned = {}
    for name, make_loss in REGULARIZED_TRAINING.items():
        student = copy.deepcopy(model).train()
        loss = make_loss(student)
        if progress:  # the epoch lines below it come from train_classifier
            print(f"fine-tune with {_loss_name(loss)} ({name}):", flush=True)
        train_classifier(
            student, subset, epochs=settings.finetune_epochs, batch_size=s.batch_size,
            lr=s.lr / 3, device=device, loss=loss, progress=progress, seed=seed + 1,
        )
        tuned[name] = student.eval()
    return tuned


def _map_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    maps: torch.Tensor,
    steps: int,
) -> dict[str, float]:
    """The study's mask scores, the deletion AUC (black fill) and the Gini index."""
    deletion = deletion_auc(model, images, maps, target=targets, steps=steps)
    return {
        **{name: float(score.mean()) for name, score in mask_scores(maps, masks).items()},
        "deletion_auc": float(deletion.mean()),
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
        Use :data:`DEMO_QUICK` (seconds) instead of :data:`DEMO_FULL`.
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the data, the initialisation and the training order.
    progress : bool
        Show training progress bars, the epoch lines, and before each fine-tune a line
        naming its loss (``fine-tune with cross-entropy + GuidedGradientRegularizer
        (guided alignment):``).

    Returns
    -------
    dict
        What ``metrics.json`` holds.
    """
    started = time.perf_counter()
    settings = DEMO_QUICK if quick else DEMO_FULL
    s = settings.study
    torch.manual_seed(seed)
    data = StudyData(s)
    seed_data = data.for_seed(seed)
    test_images, test_labels = seed_data.test_images, seed_data.test_labels
    test_masks = cast(torch.Tensor, seed_data.test_masks)  # synthetic data: masks known
    held_out = TensorDataset(test_images, test_labels)

    zoo = ModelZoo(s, data, device=device, log=lambda line: None, progress=progress)
    trained = zoo.get("simple_cnn", seed)  # in eval mode
    model, history = trained.model, trained.history
    accuracy, train_seconds = trained.accuracy, trained.train_seconds

    count = s.eval_examples
    images = test_images[:count].to(device)
    labels = test_labels[:count].to(device)
    masks = test_masks[:count].to(device)
    rows = _figure_rows(labels.cpu(), s.figure_rows).to(device)

    # the figure's columns: the input (mask outlined), the mask itself, one per method
    figure_maps: dict[str, torch.Tensor] = {MASK_COLUMN: masks[rows].float()}
    scores: dict[str, dict[str, float]] = {}
    for explain in attribution_methods(cast(SimpleCNN, model)).values():
        method_started = time.perf_counter()
        columns = explain(images, labels)
        seconds = (time.perf_counter() - method_started) / len(columns)
        for name, maps in columns.items():
            maps = maps.detach()
            scores[name] = {
                **_map_scores(model, images, labels, masks, maps, s.perturbation_steps),
                "seconds": seconds,
            }
            figure_maps[name] = maps[rows]

    training: dict[str, dict[str, float]] = {}
    tuned = _fine_tuned(model, seed_data.train_set, settings, device, seed, progress)
    for name, student in tuned.items():
        student.eval()
        plain = Saliency(student).attribute(images, target=labels, abs=True).detach()
        training[name] = {
            "accuracy": evaluate_accuracy(student, held_out, device=device),
            "gradient_alignment": float(gradient_alignment(student, images, labels).mean()),
            "saliency_gini": float(gini_sparseness(plain).mean()),
            "saliency_energy_in_mask": float(energy_pointing_game(plain, masks).mean()),
        }
        if name != CONTROL_TRAINING:
            figure_maps[f"Saliency, {name}"] = plain[rows]

    save_maps_figure(
        out / "attributions.png", images[rows], figure_maps, masks=masks[rows],
        row_labels=[data.class_names[int(i)] for i in labels[rows].tolist()], dpi=110,
    )

    results = {
        "settings": settings.record(),
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
