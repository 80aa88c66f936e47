"""Paper 1 (Llorente et al., arXiv 2309.12913): signed gradient maps under deletion."""

from __future__ import annotations

import torch

from captum_regularized.attr import signed_saliency_maps
from captum_regularized.metrics import allegiance_deletion_auc
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["MODELS", "PAPER_NUMBERS", "run_signed_maps_section"]

MODELS = {"simple_cnn": "SimpleCNN", "resnet": "ResNet-18"}
"""Zoo recipe to table name (the paper's basic CNN and ResNet-18)."""

FILL_MAPS = {"black": ("positive", "active"), "white": ("negative", "inactive")}
"""Which maps each deletion fill compares with the original map (the paper's pairing)."""

PAPER_NUMBERS: dict[tuple[str, str], tuple[float, float]] = {
    ("SimpleCNN", "positive"): (0.23, 0.14),
    ("SimpleCNN", "active"): (0.23, 0.15),
    ("SimpleCNN", "negative"): (0.21, 0.14),
    ("SimpleCNN", "inactive"): (0.21, 0.15),
    ("ResNet-18", "positive"): (0.23, 0.11),
    ("ResNet-18", "active"): (0.23, 0.11),
    ("ResNet-18", "negative"): (0.22, 0.12),
    ("ResNet-18", "inactive"): (0.22, 0.12),
}
"""The paper's CIFAR-10 allegiance AUCs (original map, signed map)."""

PAPER_MODELS = {"SimpleCNN": "CIFAR-10 basic CNN", "ResNet-18": "CIFAR-10 ResNet-18"}

SHOWN_MAPS = ("original", "positive", "negative", "active", "inactive")  # figure columns


def _new_section() -> Section:
    section = Section(
        key="signed_maps",
        title="Signed gradient maps (positive / negative / active / inactive)",
        paper=1,
        citation='Llorente et al., "A matter of attitude: focusing on positive and active '
        'gradients to boost saliency maps", arXiv 2309.12913',
        paper_claim="Deleting the top pixels of the positive or active map (filled black) "
        "changes the prediction sooner than deleting those of the original |gradient| map; "
        "with white fill the negative and inactive maps do (lower allegiance AUC).",
        protocol="Target: the predicted class. Original map: |gradient| (max over colour "
        "channels); the signed maps from `signed_saliency_maps`. Pixels deleted at the "
        "fractions of the authors' code {0, .03, .05, .07, .1, .2, ..., .9}; allegiance = "
        "the example still predicts its original class; per-example score = area under "
        "its 0/1 curve (`allegiance_deletion_auc`, lower is better; its mean is the "
        "paper's AUC). Models: SimpleCNN and the CIFAR-style ResNet-18.",
    )
    section.metric_notes = {
        "black_deletion_auc": "allegiance AUC, pixels deleted to black (lower is better)",
        "white_deletion_auc": "allegiance AUC, pixels deleted to white (lower is better)",
    }
    for table in MODELS.values():
        for fill, methods in FILL_MAPS.items():
            for method in methods:
                original, value = PAPER_NUMBERS[(table, method)]
                section.claims.append(Claim(
                    1, f"{table}: the {method} map beats the original map under {fill} "
                    "deletion", table, "original", method, f"{fill}_deletion_auc", "lower",
                    paper_value=value,
                    paper_note=f"{PAPER_MODELS[table]}: original {original:.2f}, "
                    f"{method} {value:.2f}",
                ))
    return section


def run_signed_maps_section(context: StudyContext) -> Section:
    """Measure both models on every seed; write the curve and map figures.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_signed_maps_section(tiny_context())
    >>> sorted(section.tables), [v.verdict != "" for v in section.verdicts()].count(True)
    (['ResNet-18', 'SimpleCNN'], 8)
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
            for method in ("original", *(m for methods in FILL_MAPS.values() for m in methods)):
                section.uses(table, method, trained)
            for fill, methods in FILL_MAPS.items():
                for method in ("original", *methods):
                    result = allegiance_deletion_auc(
                        trained.model, batch.images, maps[method], fill=fill
                    )
                    section.record(table, method, f"{fill}_deletion_auc",
                                   result.per_example_auc)
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
