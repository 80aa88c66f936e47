"""Section 4: norm-regularized adversarial training and the structure of its gradients.

Gong, Dou & Farnia, arXiv 2404.04647: training against an adversary whose cost is a norm
``R`` penalises the dual norm of the simple gradient, so ``l1`` makes gradient maps
sparse, ``group`` makes them sparse over patches and ``elastic_net`` sparse and smooth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import Saliency

from captum_regularized.metrics import deletion_auc, gini_sparseness
from captum_regularized.study.map_scores import mask_scores
from captum_regularized.study.model_zoo import ADVERSARIAL_KINDS, ADVERSARIAL_NORMS
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["patch_norms", "run_norm_adversarial_section"]

VARIANTS = {
    "simple_cnn": "standard",
    **{
        f"adv_{norm}_{kind}": f"{norm} ({kind})"
        for kind in ADVERSARIAL_KINDS
        for norm in ADVERSARIAL_NORMS
    },
}
"""Zoo recipe to row name."""


def patch_norms(gradient: torch.Tensor, patch: int) -> torch.Tensor:
    """L2 norm of the gradient over every ``patch x patch`` block (all channels).

    Edge blocks hold the remainder when ``patch`` does not divide the side.

    Examples
    --------
    >>> patch_norms(torch.ones(1, 1, 4, 4), 2).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """
    energy = gradient.square().sum(dim=1, keepdim=True)
    sums = F.avg_pool2d(energy, patch, ceil_mode=True, divisor_override=1)
    return sums.sqrt()


def _new_section(group_size: int) -> Section:
    section = Section(
        key="norm_adversarial",
        title="4. Norm-regularized adversarial training",
        paper='Gong, Dou & Farnia, "Structured gradient-based interpretations via '
        'norm-regularized adversarial training", arXiv 2404.04647',
        paper_claim="Adversarial training with an l1 / elastic-net cost gives sparser "
        "simple-gradient maps, with a group-norm cost group-sparse ones, and these maps "
        "are more interpretable than those of standard training.",
        protocol="All models are SimpleCNN from the same initial weights and batches; "
        "`NormRegularizedAdversarialLoss` with the closed-form adversary (fast), our "
        "iterative solver (iterative: from the closed form, each example's best iterate, "
        "BatchNorm statistics restored after the inner passes) or the authors' inner loop "
        "(authors: from zero, steps of 0.3 x the radius, the last iterate, BatchNorm "
        "statistics updated by the inner passes), inputs clamped to [0, 1]. Simple gradient: "
        "|d logit "
        "of the label / d input|. Gini of its pixels (l1, elastic net) and of its "
        f"{group_size}x{group_size}-patch L2 norms (group); energy in mask; deletion AUC "
        "of the gradient map (black substrate).",
    )
    section.metric_notes = {
        "accuracy": "held-out top-1 accuracy",
        "gini": "Gini index of |gradient| (higher is sparser)",
        "patch_gini": "Gini index of the patch norms of the gradient (higher is group-sparser)",
        "energy_in_mask": "share of |gradient| inside the mask (higher is better)",
        "deletion_auc": "deletion AUC of the gradient map (lower is better)",
    }
    for row in list(VARIANTS.values())[1:]:
        sparsity = "patch_gini" if row.startswith("group") else "gini"
        section.claims += [
            Claim(f"{row}: sparser gradient maps ({sparsity})", "models", "standard", row,
                  sparsity, "higher"),
            Claim(f"{row}: more gradient mass on the object", "models", "standard", row,
                  "energy_in_mask", "higher"),
            Claim(f"{row}: lower deletion AUC of the gradient map", "models", "standard", row,
                  "deletion_auc", "lower"),
        ]
    return section


def run_norm_adversarial_section(context: StudyContext) -> Section:
    """Measure the standard and the nine adversarially trained models on every seed.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_norm_adversarial_section(tiny_context())
    >>> len(section.tables["models"]), len(section.verdicts())
    (10, 27)
    """
    s = context.settings
    section = _new_section(s.adv_group_size)
    context.note_missing_masks(section)
    figure_maps: dict[str, torch.Tensor] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        for recipe, row in VARIANTS.items():
            trained = context.zoo.get(recipe, batch.seed)
            context.log(f"norm-regularized adversarial: scoring {row} (seed {batch.seed})")
            gradient = Saliency(trained.model).attribute(images, target=labels, abs=True)
            gradient = gradient.detach()
            scores = {
                "accuracy": trained.accuracy,
                "gini": float(gini_sparseness(gradient).mean()),
                "patch_gini": float(
                    gini_sparseness(patch_norms(gradient, s.adv_group_size)).mean()
                ),
                "deletion_auc": float(
                    deletion_auc(trained.model, images, gradient, target=labels,
                                 steps=s.perturbation_steps).mean()
                ),
            }
            if batch.masks is not None:
                scores["energy_in_mask"] = mask_scores(gradient, batch.masks)["energy_in_mask"]
            for metric, value in scores.items():
                section.record("models", row, metric, value)
            if batch.first:
                figure_maps[row] = gradient[: s.figure_rows]
    context.save_maps(section, "norm_adversarial_examples", figure_maps,
                      "|simple gradient| of every model")
    return section
