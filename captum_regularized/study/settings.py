"""Sizes of a reproduction-study run: :data:`FULL`, :data:`QUICK` (CI) and :data:`TINY` (tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["FULL", "QUICK", "TINY", "StudySettings"]


@dataclass(frozen=True)
class StudySettings:
    """Every size and hyper-parameter of one study run.

    Attributes
    ----------
    seeds : int
        Independent repetitions (data, initialisation and training order all change).
    image_size, num_classes, num_distractors : int
        The synthetic data (ignored for image size/classes with ``--data``).
    train_samples, test_samples : int
        Training set size and held-out set size (accuracy is measured on all of it).
    eval_examples : int
        Held-out images explained and scored per model and seed.
    width, epochs, batch_size, lr : training of every ``SimpleCNN`` variant.
    resnet_epochs : int
        Epochs of the ``resnet18`` of the signed-maps section.
    saturation_scale : float
        The saturated model multiplies its logits by this during training and use.
    guided_weight, guided_fraction : GuidedGradientRegularizer settings.
    adv_epsilon, adv_epsilon2, adv_group_epsilon, adv_group_size, adv_steps :
        NormRegularizedAdversarialLoss settings (``adv_steps`` for the iterative solver).
    rsi_steps : int
        Path intervals of RSI-Grad-CAM.
    perturbation_steps : int
        Steps of the deletion/insertion curves.
    figure_rows : int
        Example images per map figure.
    """

    seeds: int
    image_size: int
    num_classes: int
    num_distractors: int
    train_samples: int
    test_samples: int
    eval_examples: int
    width: int
    epochs: int
    batch_size: int
    lr: float
    resnet_epochs: int
    saturation_scale: float
    guided_weight: float
    guided_fraction: float
    adv_epsilon: float
    adv_epsilon2: float
    adv_group_epsilon: float
    adv_group_size: int
    adv_steps: int
    rsi_steps: int
    perturbation_steps: int
    figure_rows: int

    def with_seeds(self, seeds: int) -> "StudySettings":
        """A copy with another number of seeds.

        Examples
        --------
        >>> QUICK.with_seeds(2).seeds
        2
        """
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return replace(self, seeds=seeds)


FULL = StudySettings(
    seeds=3, image_size=32, num_classes=10, num_distractors=2, train_samples=2000,
    test_samples=500, eval_examples=128, width=8, epochs=3, batch_size=64, lr=1e-2,
    resnet_epochs=3, saturation_scale=10.0, guided_weight=7.5e-3, guided_fraction=0.5,
    adv_epsilon=4 / 255, adv_epsilon2=0.5, adv_group_epsilon=0.05, adv_group_size=4,
    adv_steps=2, rsi_steps=16, perturbation_steps=16, figure_rows=4,
)
"""The study whose tables the documentation quotes (about 20 minutes on 2 CPU cores)."""

QUICK = replace(
    FULL, seeds=1, train_samples=1000, test_samples=200, eval_examples=32, width=4,
    epochs=2, resnet_epochs=1, rsi_steps=8, perturbation_steps=8, figure_rows=2,
)
"""The CI-sized run (well under a minute): one seed, tiny models; verdicts are noise."""

TINY = replace(
    QUICK, num_classes=4, train_samples=96, test_samples=32, eval_examples=8, width=2,
    epochs=1, batch_size=32, rsi_steps=4, perturbation_steps=4,
)
"""The smallest run that exercises every code path (for tests)."""
