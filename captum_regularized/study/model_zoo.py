"""Every model the study trains, trained once per (recipe, seed) and shared by the sections."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.models import (
    SimpleCNN,
    evaluate_accuracy,
    train_classifier,
    with_cross_entropy,
)
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import StudyData

__all__ = [
    "ADVERSARIAL_KINDS",
    "ADVERSARIAL_NORMS",
    "RECIPES",
    "ModelZoo",
    "ScaledLogits",
    "TrainedModel",
]

ADVERSARIAL_NORMS = ("l1", "elastic_net", "group")
"""The norms of the norm-regularized adversarial section."""

LossFactory = Callable[[nn.Module, StudySettings], Any]


class ScaledLogits(nn.Module):
    """``scale * model(x)``: trained this way, the softmax saturates (confidence near 1).

    Examples
    --------
    >>> model = ScaledLogits(SimpleCNN(3, width=2), scale=10.0)
    >>> model(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled logits."""
        return self.scale * self.model(x)


@dataclass(frozen=True)
class Recipe:
    """How to build, train and explain one kind of model."""

    label: str
    build: Callable[[int, StudySettings], nn.Module]
    loss: LossFactory | None = None
    epochs: Callable[[StudySettings], int] = lambda s: s.epochs


def _simple_cnn(num_classes: int, s: StudySettings) -> nn.Module:
    return SimpleCNN(num_classes, width=s.width)


def _resnet18(num_classes: int, s: StudySettings) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


MOBILENET_WIDTH = 0.5
"""Width multiplier of the study's MobileNet-V2 (``width_mult``)."""


def _mobilenet_v2(num_classes: int, s: StudySettings) -> nn.Module:
    """torchvision's MobileNet-V2 at width 0.5 with a stride-1 stem, the usual change for
    32 px inputs: the stock stem halves the image first and leaves a 1 x 1 map at the
    end; this one keeps 2 x 2 at the same cost as the stock net at full width (in a
    2000-image, 2-epoch trial on Fashion-MNIST: 63 % held-out accuracy, the stock net
    22 %)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=MOBILENET_WIDTH)
    first_block = cast(nn.Sequential, cast(nn.Sequential, model.features)[0])
    stem = cast(nn.Conv2d, first_block[0])
    stem.stride = (1, 1)
    return model


def _guided(paper_weight: bool) -> LossFactory:
    def factory(model: nn.Module, s: StudySettings) -> Any:
        from captum_regularized.regularizers import GuidedGradientRegularizer

        weight = s.paper_guided_weight if paper_weight else s.guided_weight
        return with_cross_entropy(
            GuidedGradientRegularizer(model, weight=weight, fraction=s.guided_fraction)
        )

    return factory


ADVERSARIAL_KINDS = ("fast", "iterative", "authors")
"""The adversary of each adversarial recipe: the closed form (``fast``), our iterative
solver (from the closed form, each example's best iterate, BatchNorm statistics
restored) and the authors' inner loop (from zero, steps of ``paper_step_fraction`` times
the radius, the last iterate, BatchNorm statistics updated by the inner passes)."""


def _adversarial(norm: str, kind: str) -> LossFactory:
    def factory(model: nn.Module, s: StudySettings) -> Any:
        from captum_regularized.regularizers import NormRegularizedAdversarialLoss

        options: dict[str, Any] = {"epsilon": s.adv_epsilon}
        if norm == "elastic_net":
            options["epsilon2"] = s.adv_epsilon2
        if norm == "group":
            options = {"epsilon": s.adv_group_epsilon, "group_size": s.adv_group_size}
        if kind == "fast":
            options.update(steps=1)
        elif kind == "iterative":
            # Each example's best iterate (one extra forward per step, see
            # ``select_iterate``); the library's default is PGD's last iterate.
            options.update(steps=s.adv_steps, select_iterate="best")
        else:
            options.update(
                steps=s.adv_steps, start="zero", select_iterate="last", update_batchnorm=True,
                step_size=s.paper_step_fraction * options["epsilon"],
            )
        return NormRegularizedAdversarialLoss(
            model, norm=norm, input_range=(0.0, 1.0), **options
        )

    return factory


RECIPES: dict[str, Recipe] = {
    "simple_cnn": Recipe("SimpleCNN", _simple_cnn),
    "resnet18": Recipe("resnet18", _resnet18, epochs=lambda s: s.resnet_epochs),
    "saturated": Recipe(
        "SimpleCNN, saturated softmax",
        lambda c, s: ScaledLogits(SimpleCNN(c, width=s.width), s.saturation_scale),
        epochs=lambda s: s.saturated_epochs,
    ),
    "guided": Recipe("SimpleCNN + guided-gradient regularizer", _simple_cnn, _guided(False)),
    "guided_paper": Recipe(
        "SimpleCNN + guided-gradient regularizer, paper's weight", _simple_cnn, _guided(True)
    ),
    "mobilenet_v2": Recipe(
        "MobileNet-V2", _mobilenet_v2, epochs=lambda s: s.mobilenet_epochs
    ),
    "guided_mobilenet_v2": Recipe(
        "MobileNet-V2 + guided-gradient regularizer", _mobilenet_v2, _guided(False),
        epochs=lambda s: s.mobilenet_epochs,
    ),
    **{
        f"adv_{norm}_{kind}": Recipe(
            f"SimpleCNN + {norm} adversarial ({kind})", _simple_cnn, _adversarial(norm, kind)
        )
        for norm in ADVERSARIAL_NORMS
        for kind in ADVERSARIAL_KINDS
    },
}
"""Recipe name to how it is built and trained. Every SimpleCNN variant of a seed starts
from the same initial weights and sees the same batches, so comparisons are paired; so
does the MobileNet-V2 pair (its ReLU6 activations take the guided rule of ``ReLU``)."""


@dataclass
class TrainedModel:
    """A model trained by the zoo, in eval mode, with its held-out numbers."""

    recipe: str
    seed: int
    model: nn.Module
    accuracy: float
    mean_max_softmax: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-epoch training loss and accuracy, as :func:`train_classifier` returns them."""

    @property
    def grad_cam_layer(self) -> nn.Module:
        """The last convolutional block (Grad-CAM's layer)."""
        inner = self.model.model if isinstance(self.model, ScaledLogits) else self.model
        # ``nn.Module.__getattr__`` is typed ``Tensor | Module``; these are submodules.
        if hasattr(inner, "features"):  # MobileNet-V2
            return cast(nn.Sequential, inner.features)[-1]
        return cast(nn.Module, inner.layer4 if hasattr(inner, "layer4") else inner.block3)


class ModelZoo:
    """Trains each ``(recipe, seed)`` once, on first request, and keeps it.

    Parameters
    ----------
    settings : StudySettings
        Training sizes.
    data : StudyData
        Per-seed training and held-out sets.
    device : str
        Where to train and evaluate.
    log : callable
        ``log(line)`` for one progress line per trained model.
    progress : bool
        Show the training bars.

    Examples
    --------
    >>> from captum_regularized.study.settings import TINY
    >>> zoo = ModelZoo(TINY, StudyData(TINY), log=lambda line: None, progress=False)
    >>> trained = zoo.get("simple_cnn", seed=0)
    >>> zoo.get("simple_cnn", seed=0) is trained, trained.model.training
    (True, False)
    """

    def __init__(
        self,
        settings: StudySettings,
        data: StudyData,
        device: str = "cpu",
        log: Callable[[str], None] = print,
        progress: bool = True,
    ) -> None:
        self.settings = settings
        self.data = data
        self.device = device
        self.log = log
        self.progress = progress
        self._trained: dict[tuple[str, int], TrainedModel] = {}

    def trained(self) -> list[TrainedModel]:
        """Every model trained so far, in training order."""
        return list(self._trained.values())

    def get(self, recipe: str, seed: int) -> TrainedModel:
        """The model of ``recipe`` trained on ``seed`` (trained now if needed)."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        key = (recipe, seed)
        if key not in self._trained:
            self._trained[key] = self._train(recipe, seed)
        return self._trained[key]

    def _train(self, name: str, seed: int) -> TrainedModel:
        recipe, s = RECIPES[name], self.settings
        seed_data = self.data.for_seed(seed)
        torch.manual_seed(seed)
        model = recipe.build(self.data.num_classes, s)
        loss = recipe.loss(model, s) if recipe.loss is not None else None
        started = time.perf_counter()
        history = train_classifier(
            model, seed_data.train_set, epochs=recipe.epochs(s), batch_size=s.batch_size,
            lr=s.lr, device=self.device, loss=loss, progress=self.progress, seed=seed,
        )
        seconds = time.perf_counter() - started
        model.eval()
        held_out = TensorDataset(seed_data.test_images, seed_data.test_labels)
        accuracy = evaluate_accuracy(model, held_out, device=self.device)
        with torch.no_grad():
            logits = model(seed_data.test_images[: s.eval_examples].to(self.device))
            confidence = float(logits.softmax(dim=1).amax(dim=1).mean())
        self.log(
            f"trained {recipe.label} (seed {seed}) in {seconds:.1f} s: held-out accuracy "
            f"{100 * accuracy:.1f} %, mean max-softmax {confidence:.3f}"
        )
        return TrainedModel(name, seed, model, accuracy, confidence, seconds, history)
