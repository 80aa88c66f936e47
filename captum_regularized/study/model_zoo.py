"""Every model the study scores: trained once per (recipe, seed), cached on disk, shared.

Regularized models are fine-tuned from a trained one next to a plain twin that sees the
same batches, so every comparison is paired.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models.resnet import BasicBlock, ResNet

from captum_regularized import __version__
from captum_regularized.datasets.fashion_mnist import default_cache_dir
from captum_regularized.models import (
    SimpleCNN,
    evaluate_correct,
    train_classifier,
    with_cross_entropy,
)
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import SeedData, StudyData

if TYPE_CHECKING:
    from captum_regularized.regularizers import RegularizerOutput

__all__ = ["ADVERSARIAL_NORMS", "FINETUNE_SETTINGS", "MIN_MAP_SIZE", "RECIPES",
           "SCRATCH_SETTINGS", "CifarResNet18", "ModelZoo", "ScaledLogits", "TrainedModel",
           "default_checkpoint_cache"]

ADVERSARIAL_NORMS = ("l1", "elastic_net", "group")  # of the sparsity claims
MIN_MAP_SIZE = 4
"""The coarsest CAM map the study scores is ``MIN_MAP_SIZE x MIN_MAP_SIZE``."""


def default_checkpoint_cache() -> Path:
    """``$XDG_CACHE_HOME/captum_regularized/study``: where ``reproduce`` keeps checkpoints.

    Examples
    --------
    >>> default_checkpoint_cache().name
    'study'
    """
    return default_cache_dir() / "study"

SCRATCH_SETTINGS = (
    "image_size", "fashion_mnist_size", "num_classes", "train_samples",
    "synthetic_train_samples", "test_samples", "width", "epochs", "batch_size", "lr",
    "resnet_width", "resnet_epochs", "synthetic_configuration",
)
"""The settings a model trained from scratch depends on (its checkpoint key)."""

FINETUNE_SETTINGS = ("finetune_samples", "finetune_epochs", "finetune_lr")
"""Added to the key of every fine-tuned model, with its recipe's own ``uses``."""

GUIDED_SETTINGS = ("paper_guided_weight", "guided_fraction")
ADVERSARIAL_SETTINGS = ("adv_epsilon", "adv_epsilon2", "adv_group_epsilon", "adv_group_size",
                        "adv_steps", "adv_step_fraction")


class ScaledLogits(nn.Module):
    """``scale * model(x)``: the same ranking of classes, a saturated softmax.

    Examples
    --------
    >>> ScaledLogits(SimpleCNN(3, width=2), scale=8.0)(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x)


class CifarResNet18(ResNet):
    """ResNet-18 for small images: a 3 x 3 stride-1 stem, no max-pool, stage widths
    ``w, 2w, 4w, 8w`` (``layer4`` is 4 x 4 at 28 or 32 px).

    Examples
    --------
    >>> model = CifarResNet18(10, width=4)
    >>> model(torch.rand(2, 3, 28, 28)).shape, model.fc.in_features
    (torch.Size([2, 10]), 32)
    """

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()  # type: ignore[assignment]
        self.inplanes = width
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.fc = nn.Linear(8 * width, num_classes)


def _guided_loss(model: nn.Module, s: StudySettings) -> Any:
    from captum_regularized.regularizers import GuidedGradientRegularizer

    regularizer = GuidedGradientRegularizer(
        model, weight=s.paper_guided_weight, fraction=s.guided_fraction
    )
    return with_cross_entropy(regularizer)


def _adversarial_loss(norm: str) -> Callable[[nn.Module, StudySettings], Any]:
    """AdvGrad's loss of ``norm`` with the authors' inner loop."""

    def factory(model: nn.Module, s: StudySettings) -> Any:
        from captum_regularized.regularizers import NormRegularizedAdversarialLoss

        epsilon = s.adv_group_epsilon if norm == "group" else s.adv_epsilon
        options: dict[str, dict[str, Any]] = {"elastic_net": {"epsilon2": s.adv_epsilon2},
                                              "group": {"group_size": s.adv_group_size}}
        return NormRegularizedAdversarialLoss(
            model, norm=norm, epsilon=epsilon, input_range=(0.0, 1.0), steps=s.adv_steps,
            start="zero", select_iterate="last", update_batchnorm=True,
            step_size=s.adv_step_fraction * epsilon, **options.get(norm, {}),
        )

    return factory


def _gaze_loss(model: nn.Module, s: StudySettings) -> Callable[..., RegularizerOutput]:
    """AdvGrad's gaze loss on images stacked with their masks as a last channel."""
    from captum_regularized.regularizers import NormRegularizedAdversarialLoss

    loss = NormRegularizedAdversarialLoss(
        model, norm="gaze", epsilon=s.gaze_epsilon, input_range=(0.0, 1.0)
    )
    return lambda stacked, labels: loss(stacked[:, :-1], labels, mask=stacked[:, -1:])


@dataclass(frozen=True)
class Recipe:
    """How one model is made: from scratch (``parent`` None) or fine-tuned from ``parent``
    with ``loss`` (None: cross-entropy), built from the settings named in ``uses``."""

    label: str
    parent: str | None = None
    loss: Callable[[nn.Module, StudySettings], Any] | None = None
    with_masks: bool = False
    uses: tuple[str, ...] = ()


RECIPES: dict[str, Recipe] = {
    "simple_cnn": Recipe("SimpleCNN"),
    "resnet": Recipe("ResNet-18 (CIFAR-style)"),
    "saturated": Recipe("SimpleCNN, logits scaled to saturate the softmax", "simple_cnn"),
    "simple_cnn_tuned": Recipe("SimpleCNN fine-tuned (plain twin)", "simple_cnn"),
    "resnet_tuned": Recipe("ResNet-18 fine-tuned (plain twin)", "resnet"),
    "guided": Recipe("SimpleCNN + guided regularizer (7.5e-3)", "simple_cnn", _guided_loss,
                     uses=GUIDED_SETTINGS),
    "guided_resnet": Recipe("ResNet-18 + guided regularizer (7.5e-3)", "resnet", _guided_loss,
                            uses=GUIDED_SETTINGS),
    **{
        f"adv_{norm}": Recipe(f"SimpleCNN + {norm} AdvGrad", "simple_cnn",
                              _adversarial_loss(norm), uses=ADVERSARIAL_SETTINGS)
        for norm in ADVERSARIAL_NORMS
    },
    "adv_gaze": Recipe("SimpleCNN + gaze AdvGrad", "simple_cnn", _gaze_loss, with_masks=True,
                       uses=("gaze_epsilon",)),
}


@dataclass
class TrainedModel:
    """A model of the zoo in eval mode, with its held-out numbers (``correct``: per image)."""

    recipe: str
    seed: int
    model: nn.Module
    accuracy: float
    floor: float
    mean_max_softmax: float
    train_seconds: float
    correct: torch.Tensor
    map_size: tuple[int, int] | None = None
    notes: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The recipe's label."""
        return RECIPES[self.recipe].label

    @property
    def scored(self) -> bool:
        """Whether the model reached its data set's accuracy floor."""
        return self.accuracy >= self.floor

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM-family maps are taken at (the last block)."""
        inner = self.model.model if isinstance(self.model, ScaledLogits) else self.model
        if isinstance(inner, ResNet):
            return cast(nn.Module, inner.layer4)
        return cast(nn.Module, inner.block3)

    def unscored_reason(self) -> str:
        """Why claims on this model are not measured ("" when it is scored)."""
        if self.scored:
            return ""
        return (f"{self.label} (seed {self.seed}) is at {100 * self.accuracy:.2f} % held-out "
                f"accuracy, below the floor of {100 * self.floor:.0f} %: not measured")


def _map_size(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> tuple[int, int]:
    seen: list[tuple[int, int]] = []
    handle = layer.register_forward_hook(
        lambda module, args, out: seen.append(tuple(out.shape[-2:]))  # type: ignore[arg-type]
    )
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        handle.remove()
    return seen[0]


@dataclass(eq=False)
class ModelZoo:
    """Trains each ``(recipe, seed)`` once, on first request, and keeps it (also on disk).

    Parameters
    ----------
    settings, data : StudySettings, StudyData
        Training sizes; per-seed training and held-out sets.
    device : str
        Where to train and evaluate.
    log, progress : callable, bool
        ``log(line)`` for one line per trained model; show the training bars.
    cache : Path or None
        Folder of checkpoints (``None``: nothing is kept); their key:
        :doc:`/design_notes/data_and_study`.

    Examples
    --------
    >>> from captum_regularized.study.settings import TINY
    >>> zoo = ModelZoo(TINY, StudyData(TINY), log=lambda line: None, progress=False)
    >>> trained = zoo.get("simple_cnn", seed=0)
    >>> zoo.get("simple_cnn", seed=0) is trained, trained.model.training, trained.map_size
    (True, False, (8, 8))
    """

    settings: StudySettings
    data: StudyData
    device: str = "cpu"
    log: Callable[[str], None] = print
    progress: bool = True
    cache: Path | None = None
    _trained: dict[tuple[str, int], TrainedModel] = field(default_factory=dict, init=False,
                                                          repr=False)

    def trained(self) -> list[TrainedModel]:
        """Every model made so far, in order."""
        return list(self._trained.values())

    def get(self, recipe: str, seed: int) -> TrainedModel:
        """The model of ``recipe`` on ``seed`` (made now if needed)."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        key = (recipe, seed)
        if key not in self._trained:
            self._trained[key] = self._make(recipe, seed)
        return self._trained[key]

    def fresh(self, recipe: str, seed: int) -> nn.Module:
        """A new ``simple_cnn`` or ``resnet`` initialised from ``seed`` (global RNG kept)."""
        s, classes = self.settings, self.data.num_classes
        if recipe not in ("simple_cnn", "resnet"):
            raise ValueError(f"fresh networks are 'simple_cnn' or 'resnet', got {recipe!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if recipe == "resnet":
                return CifarResNet18(classes, width=s.resnet_width)
            return SimpleCNN(classes, width=s.width)

    def _cache_file(self, recipe: str, seed: int) -> Path | None:
        if self.cache is None:
            return None
        made = RECIPES[recipe]
        names = SCRATCH_SETTINGS + (() if made.parent is None else FINETUNE_SETTINGS + made.uses)
        training = {name: getattr(self.settings, name) for name in names}
        key = json.dumps([recipe, seed, self.data.source, training, __version__],
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.cache / f"{recipe}-{seed}-{digest}.pt"

    def _make(self, name: str, seed: int) -> TrainedModel:
        recipe, s = RECIPES[name], self.settings
        seed_data = self.data.for_seed(seed)
        if name == "saturated":
            return self._saturated(seed, seed_data)
        file = self._cache_file(name, seed)
        if recipe.parent is None:
            model = self.fresh(name, seed).to(self.device)
        else:
            model = copy.deepcopy(self.get(recipe.parent, seed).model).to(self.device)
        saved = _load_checkpoint(file)
        if saved is not None:
            model.load_state_dict(saved["state"])
            seconds, history = saved["seconds"], saved["history"]
        else:
            seconds, history = self._train(name, seed, model, seed_data)
            if file is not None:
                _save_checkpoint(file, {"state": model.state_dict(), "seconds": seconds,
                                        "history": history})
        notes = "" if recipe.parent is None else (
            f"fine-tuned from {recipe.parent}: {s.finetune_epochs} epoch(s) on "
            f"{min(s.finetune_samples, len(cast(Sized, seed_data.train_set)))} images"
        )
        return self._evaluated(name, seed, model.eval(), seed_data, seconds, history, notes)

    def _train(
        self, name: str, seed: int, model: nn.Module, seed_data: SeedData
    ) -> tuple[float, list[dict[str, float]]]:
        recipe, s = RECIPES[name], self.settings
        train_set, lr = seed_data.train_set, s.lr
        epochs = s.resnet_epochs if name == "resnet" else s.epochs
        if recipe.parent is not None:
            train_set = _subset(train_set, s.finetune_samples, seed, recipe.with_masks)
            epochs, lr = s.finetune_epochs, s.finetune_lr
        loss = recipe.loss(model, s) if recipe.loss is not None else None
        torch.manual_seed(seed)
        started = time.perf_counter()
        model.train()
        history = train_classifier(
            model, train_set, epochs=epochs, batch_size=s.batch_size, lr=lr,
            device=self.device, loss=loss, progress=self.progress, seed=seed,
        )
        return time.perf_counter() - started, history

    def _evaluated(
        self, name: str, seed: int, model: nn.Module, seed_data: SeedData, seconds: float,
        history: list[dict[str, float]], notes: str,
    ) -> TrainedModel:
        s = self.settings
        images, labels = seed_data.test_images, seed_data.test_labels
        correct = evaluate_correct(model, TensorDataset(images, labels), batch_size=1024,
                                   device=self.device)
        with torch.no_grad():
            scored = model(images[: s.eval_examples].to(self.device)).softmax(1)
        trained = TrainedModel(
            recipe=name, seed=seed, model=model, accuracy=float(correct.float().mean()),
            floor=s.floor(self.data.key), mean_max_softmax=float(scored.amax(1).mean()),
            train_seconds=seconds, correct=correct.float(), notes=notes, history=history,
        )
        trained.map_size = _map_size(model, trained.cam_layer, images[:1].to(self.device))
        self.log(
            f"{trained.label} (seed {seed}): held-out accuracy {100 * trained.accuracy:.1f} % "
            f"(floor {100 * trained.floor:.0f} %), mean max-softmax "
            f"{trained.mean_max_softmax:.3f}, {seconds:.0f} s"
        )
        return trained

    def _saturated(self, seed: int, seed_data: SeedData) -> TrainedModel:
        base = self.get("simple_cnn", seed)
        images = seed_data.test_images[: self.settings.eval_examples].to(self.device)
        with torch.no_grad():
            logits = base.model(images)
        scale = 1.0
        while float((scale * logits).softmax(1).amax(1).mean()) < self.settings.saturation_target:
            scale *= 2.0
            if scale > 2.0**20:
                break
        model = ScaledLogits(base.model, scale).eval()
        notes = f"the trained SimpleCNN with logits x {scale:g}"
        return self._evaluated("saturated", seed, model, seed_data, 0.0, [], notes)


def _load_checkpoint(file: Path | None) -> dict[str, Any] | None:
    """The checkpoint in ``file``; ``None`` when there is none or it cannot be read."""
    if file is None or not file.exists():
        return None
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
        return None
    return saved if isinstance(saved, dict) and "state" in saved else None


def _save_checkpoint(file: Path, saved: dict[str, Any]) -> None:
    """Write ``saved`` beside ``file`` and move it in whole."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
    torch.save(saved, partial)
    os.replace(partial, file)


def _subset(train_set: Any, count: int, seed: int, with_masks: bool) -> TensorDataset:
    """The first ``count`` training items in a seeded order (masks as a last channel)."""
    tensors = cast(TensorDataset, train_set).tensors
    order = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(seed))
    chosen = order[: min(count, len(order))]
    images, labels = tensors[0][chosen], tensors[1][chosen]
    if with_masks:
        images = torch.cat([images, tensors[2][chosen].to(images.dtype)], dim=1)
    return TensorDataset(images, labels)
