"""Paper 3 (Torres Figueroa et al., arXiv 2404.15024): guided-gradient alignment fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerGradCam, Saliency

from captum_regularized.attr import LayerGradCamPlusPlus, LayerScoreCam
from captum_regularized.metrics import gradient_alignment
from captum_regularized.study.map_scores import cam_quality_scores, mask_scores, upsampled
from captum_regularized.study.model_zoo import TrainedModel
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim, summarize

__all__ = ["ACCURACY_MARGIN", "PAIRS", "cam_methods", "run_guided_section"]

PAIRS = {
    "SimpleCNN": ("simple_cnn", "simple_cnn_tuned", "guided"),
    "ResNet-18": ("resnet", "resnet_tuned", "guided_resnet"),
}
"""Table name to the recipes before fine-tuning, of the plain twin and of the guided model."""

BEFORE, PLAIN, GUIDED = "before fine-tuning", "plain fine-tuning", "guided fine-tuning"

ACCURACY_MARGIN = 0.02  # the accuracy claim: at most 2 points lost

CAM_METRICS = {
    "average_drop": ("lower", "AD: % confidence lost on the map-weighted image"),
    "average_gain": ("higher", "AG: % confidence gained"),
    "increase_in_confidence": ("higher", "IC: % of images gaining confidence"),
    "insertion_auc": ("higher", "insertion AUC, blur substrate"),
    "deletion_auc": ("lower", "deletion AUC, black substrate"),
}  # the CAM papers' scores: metric to (direction, meaning)

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cam_methods(trained: TrainedModel) -> dict[str, Explain]:
    """Grad-CAM (Captum's, with ReLU), Grad-CAM++ and Score-CAM at the CAM layer, upsampled.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=2).eval()
    >>> trained = TrainedModel("simple_cnn", 0, model, 0.5, 0.5, 0.5, 0.0, torch.ones(1))
    >>> methods = cam_methods(trained)
    >>> maps = methods["Score-CAM"](torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
    >>> list(methods), tuple(maps.shape)
    (['Grad-CAM', 'Grad-CAM++', 'Score-CAM'], (2, 1, 16, 16))
    """
    model, layer = trained.model, trained.cam_layer
    grad_cam = LayerGradCam(model, layer)
    plus_plus = LayerGradCamPlusPlus(model, layer)
    score = LayerScoreCam(model, layer)
    return {
        "Grad-CAM": lambda x, t: upsampled(
            grad_cam.attribute(x, target=t, relu_attributions=True).detach(), x
        ),
        "Grad-CAM++": lambda x, t: upsampled(
            plus_plus.attribute(x, target=t, eps=1e-6).detach(), x
        ),
        "Score-CAM": lambda x, t: upsampled(score.attribute(x, target=t, progress=False), x),
    }


def _new_section() -> Section:
    section = Section(
        key="guided_gradients",
        title="Guided-gradient alignment fine-tuning",
        paper=3,
        citation='Torres Figueroa et al., "A learning paradigm for interpretable '
        'gradients", arXiv 2404.15024',
        paper_claim="Fine-tuning with a penalty on the cosine distance between the input "
        "gradient and guided backprop (weight 7.5e-3) aligns the two and improves the "
        "CAM maps (Grad-CAM, Grad-CAM++, Score-CAM) on AD, AG, IC, insertion and "
        "deletion, at little cost in accuracy.",
        protocol="Each trained model (SimpleCNN, CIFAR-style ResNet-18) is fine-tuned "
        "twice from the same weights on the same batches: with the paper's loss "
        "(`GuidedGradientRegularizer`, cosine distance, weight `paper_guided_weight`) and "
        "with cross-entropy alone (the plain twin, the baseline of every claim). Target: "
        "the label. Alignment: `gradient_alignment` (cosine of plain and guided "
        "gradients), also before fine-tuning. CAM maps at the last block, upsampled "
        "bilinearly; AD/AG/IC from `confidence_change` (percent); insertion (blur) and "
        "deletion (black) AUCs. Accuracy: correctness on every held-out image, judged "
        f"with a non-inferiority margin of {ACCURACY_MARGIN:g}.",
    )
    section.metric_notes = {
        "gradient_alignment": "cosine(plain gradient, guided backprop) (higher is better)",
        "gradient_energy_in_mask": "share of |gradient| inside the mask (higher is better)",
        "correct": "held-out image classified correctly (its mean is the accuracy)",
        **{metric: f"{meaning} ({better} is better)"
           for metric, (better, meaning) in CAM_METRICS.items()},
    }
    for table in PAIRS:
        section.claims += [
            Claim(3, f"{table}: the loss aligns the gradient with guided backprop", table,
                  PLAIN, GUIDED, "gradient_alignment", "higher"),
            Claim(3, f"{table}: accuracy drops by at most {ACCURACY_MARGIN:g}", table,
                  PLAIN, GUIDED, "correct", "higher", margin=ACCURACY_MARGIN),
            Claim(3, f"{table}: alignment after guided fine-tuning is above its value "
                  "before", table, BEFORE, GUIDED, "gradient_alignment", "higher",
                  extra=True),
            Claim(3, f"{table}: the guided gradient puts more mass on the object", table,
                  PLAIN, GUIDED, "gradient_energy_in_mask", "higher", extra=True),
        ]
        for method in ("Grad-CAM", "Grad-CAM++", "Score-CAM"):
            for metric, (better, _) in CAM_METRICS.items():
                section.claims.append(Claim(
                    3, f"{table}: {method} of the guided model is better on "
                    f"{metric.replace('_', ' ')}", f"{table}, {method}", PLAIN, GUIDED,
                    metric, better,
                ))
    return section


def _alignment_note(section: Section, table: str) -> None:
    rows = section.tables[table]
    means = {row: float(summarize(rows[row]["gradient_alignment"])["mean"])  # type: ignore[arg-type]
             for row in (BEFORE, PLAIN, GUIDED)}
    moved = means[GUIDED] - means[PLAIN]
    section.notes.append(
        f"{table}: mean alignment {means[BEFORE]:.3f} before fine-tuning, "
        f"{means[PLAIN]:.3f} after plain and {means[GUIDED]:.3f} after guided fine-tuning: "
        f"the loss moved it by {moved:+.3f} against the plain twin."
    )


def run_guided_section(context: StudyContext) -> Section:
    """Measure both pairs on every seed; draw the gradients and Grad-CAM maps.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_guided_section(tiny_context())
    >>> sorted(section.tables["SimpleCNN"])
    ['before fine-tuning', 'guided fine-tuning', 'plain fine-tuning']
    >>> len(section.claims)
    38
    """
    section = _new_section()
    s = context.settings
    context.note_missing_masks(section)
    figure_maps: dict[str, torch.Tensor] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        for table, recipes in PAIRS.items():
            for recipe, row in zip(recipes, (BEFORE, PLAIN, GUIDED)):
                trained = context.zoo.get(recipe, batch.seed)
                context.log(f"guided gradients: scoring {table}, {row} (seed {batch.seed})")
                model = trained.model
                section.uses(table, row, trained)
                section.record(table, row, "correct", trained.correct)
                section.record(table, row, "gradient_alignment",
                               gradient_alignment(model, images, target=labels))
                gradient = Saliency(model).attribute(images, target=labels, abs=True)
                if batch.masks is not None:
                    energy = mask_scores(gradient.detach(), batch.masks)["energy_in_mask"]
                    section.record(table, row, "gradient_energy_in_mask", energy)
                if row == BEFORE:
                    continue
                for method, explain in cam_methods(trained).items():
                    maps = explain(images, labels)
                    section.uses(f"{table}, {method}", row, trained, cam=True)
                    for metric, values in cam_quality_scores(
                        model, images, maps, labels, s.perturbation_steps
                    ).items():
                        section.record(f"{table}, {method}", row, metric, values)
                    if batch.first and method == "Grad-CAM" and table == "SimpleCNN":
                        figure_maps[f"{row}: gradient"] = gradient.detach()[: s.figure_rows]
                        figure_maps[f"{row}: Grad-CAM"] = maps[: s.figure_rows]
    for table in PAIRS:
        _alignment_note(section, table)
    context.save_maps(section, "guided_examples", figure_maps,
                      "SimpleCNN: plain gradient and Grad-CAM, plain vs guided fine-tuning")
    return section
