"""Section 1: positive/active (and negative/inactive) gradient maps under deletion.

Llorente et al., arXiv 2309.12913: deleting the pixels a map ranks highest should change
the prediction quickly. With black fill, the positive and active maps should do it
faster (lower allegiance AUC) than the plain |gradient| map; with white fill, the
negative and inactive maps should.
"""

from __future__ import annotations

import torch

from captum_regularized.attr import signed_saliency_maps
from captum_regularized.metrics import allegiance_deletion_auc
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["MODELS", "PAPER_NUMBERS", "run_signed_maps_section"]

MODELS = {"simple_cnn": "SimpleCNN", "resnet18": "resnet18"}
"""Zoo recipe to table name."""

FILL_MAPS = {
    "black": ("original", "positive", "active"),
    "white": ("original", "negative", "inactive"),
}
"""Which maps each deletion fill compares (the paper's pairing)."""

PAPER_NUMBERS = {
    ("SimpleCNN", "positive", "black"): "CIFAR-10 basic CNN: original .23, positive .14",
    ("SimpleCNN", "active", "black"): "CIFAR-10 basic CNN: original .23, active .15",
}
"""The paper's allegiance AUCs quoted next to the claims they correspond to."""

SHOWN_MAPS = ("original", "positive", "negative", "active", "inactive")
"""The maps of the example figure, in column order."""


def _new_section() -> Section:
    section = Section(
        key="signed_maps",
        title="1. Signed gradient maps (positive / negative / active / inactive)",
        paper='Llorente et al., "A matter of attitude: focusing on positive and active '
        'gradients to boost saliency maps", arXiv 2309.12913',
        paper_claim="Deleting the top pixels of the positive or active map (filled black) "
        "changes the prediction sooner than deleting those of the original |gradient| map; "
        "with white fill the negative and inactive maps do. E.g. CIFAR-10 basic CNN, black "
        "deletion allegiance AUC: original .23, positive .14, active .15 (lower is better).",
        protocol="Target: the predicted class. Original map: |gradient| (max over colour "
        "channels); the signed maps from `signed_saliency_maps`. Pixels deleted at the "
        "paper's fractions {0, .03, .05, .07, .1, .2, ..., .9}; allegiance = share of images "
        "still predicting their original class; score = area under it "
        "(`allegiance_deletion_auc`, lower is better). Models: SimpleCNN and torchvision "
        "resnet18 (weights=None) trained on the study data.",
    )
    section.metric_notes = {
        "black_deletion_auc": "allegiance AUC, pixels deleted to black (lower is better)",
        "white_deletion_auc": "allegiance AUC, pixels deleted to white (lower is better)",
        "accuracy": "held-out top-1 accuracy of the model",
    }
    for table in MODELS.values():
        for fill, (_, *methods) in FILL_MAPS.items():
            for method in methods:
                section.claims.append(
                    Claim(
                        f"{table}: {method} map beats the original map under {fill} deletion",
                        table, "original", method, f"{fill}_deletion_auc", "lower",
                        paper=PAPER_NUMBERS.get((table, method, fill), ""),
                    )
                )
    return section


def run_signed_maps_section(context: StudyContext) -> Section:
    """Measure every model on every seed; write the curve and map figures.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_signed_maps_section(tiny_context())
    >>> sorted(section.tables), len(section.verdicts())
    (['SimpleCNN', 'models', 'resnet18'], 8)
    """
    section = _new_section()
    rows = slice(0, context.settings.figure_rows)
    curves: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for batch in context.eval_batches():
        for recipe, table in MODELS.items():
            trained = context.zoo.get(recipe, batch.seed)
            context.log(f"signed maps: scoring {table} (seed {batch.seed})")
            maps = signed_saliency_maps(trained.model, batch.images)
            maps["original"] = maps["gradient"].abs()
            section.record("models", table, "accuracy", trained.accuracy)
            for fill, methods in FILL_MAPS.items():
                for method in methods:
                    result = allegiance_deletion_auc(
                        trained.model, batch.images, maps[method], fill=fill
                    )
                    section.record(table, method, f"{fill}_deletion_auc", float(result.auc))
                    if batch.first:
                        panel = curves.setdefault(f"{table}, {fill} deletion", {})
                        panel[method] = (result.fractions, result.allegiance)
            if batch.first and recipe == "simple_cnn":
                context.save_maps(
                    section, "signed_maps_examples",
                    {name: maps[name][rows] for name in SHOWN_MAPS}, "SimpleCNN signed maps",
                    masks=False,
                )
    context.save_curves(section, "signed_maps_allegiance", curves, "allegiance curves",
                        ylabel="allegiance", xlabel="fraction of pixels deleted")
    return section
