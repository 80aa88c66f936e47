"""Section 3: training with the guided-gradient alignment regularizer.

Torres Figueroa et al., arXiv 2404.15024: penalising the distance between the plain
input gradient and guided backprop during training makes the plain gradient
interpretable, and improves CAM-style explanations at a small cost in accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerGradCam, Saliency
from torch import nn

from captum_regularized.attr import LayerGradCamPlusPlus, LayerScoreCam
from captum_regularized.metrics import confidence_change, gradient_alignment
from captum_regularized.study.map_scores import faithfulness_scores, mask_scores, upsampled
from captum_regularized.study.model_zoo import TrainedModel
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = [
    "ACCURACY_MARGIN",
    "MOBILENET_MODELS",
    "MODELS",
    "cam_methods",
    "run_guided_section",
]

MODELS = {
    "simple_cnn": "baseline",
    "guided": "regularized",
    "guided_paper": "regularized (paper's weight)",
}
"""Zoo recipe to row name: no regularizer, our weight (0.03), the paper's (7.5e-3)."""

MOBILENET_MODELS = {
    "mobilenet_v2": "MobileNet-V2 baseline",
    "guided_mobilenet_v2": "MobileNet-V2 regularized",
}
"""The paper's MobileNet-V2 pair (our weight): scored in the ``models`` table only, since
at 32 px its last block is 2 x 2, too coarse for Grad-CAM's map to be scored."""

ACCURACY_MARGIN = 0.02
"""The accuracy claim: the regularized model loses at most 2 points."""

CAM_METRICS = {
    "average_drop": "lower",
    "average_gain": "higher",
    "increase_in_confidence": "higher",
    "insertion_auc": "higher",
    "deletion_auc": "lower",
}

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cam_methods(trained: TrainedModel) -> dict[str, Explain]:
    """Grad-CAM++ and Score-CAM on the model's Grad-CAM layer, upsampled to the images.

    The package's :class:`~captum_regularized.attr.LayerGradCamPlusPlus` (with
    pytorch-grad-cam's ``eps``) and :class:`~captum_regularized.attr.LayerScoreCam`,
    which give pytorch-grad-cam's maps, so the inventory needs no optional package.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> trained = TrainedModel("simple_cnn", 0, SimpleCNN(3, width=2).eval(), 0.5, 0.5, 0.0)
    >>> maps = cam_methods(trained)["Score-CAM"](torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
    >>> sorted(cam_methods(trained)), tuple(maps.shape)
    (['Grad-CAM++', 'Score-CAM'], (2, 1, 16, 16))
    """
    plus_plus = LayerGradCamPlusPlus(trained.model, trained.grad_cam_layer)
    score = LayerScoreCam(trained.model, trained.grad_cam_layer)
    return {
        "Grad-CAM++": lambda x, t: upsampled(
            plus_plus.attribute(x, target=t, eps=1e-6).detach(), x
        ),
        "Score-CAM": lambda x, t: upsampled(score.attribute(x, target=t, progress=False), x),
    }


def _new_section(cam_tables: list[str]) -> Section:
    section = Section(
        key="guided_gradients",
        title="3. Guided-gradient alignment training",
        paper='Torres Figueroa et al., "A learning paradigm for interpretable gradients", '
        "arXiv 2404.15024",
        paper_claim="Training with a penalty on the distance between the input gradient "
        "and guided backprop aligns the two, focuses the plain gradient on the object, and "
        "improves Grad-CAM's AD/AG/IC and insertion/deletion scores, at little cost in "
        "accuracy.",
        protocol="Baseline and regularized SimpleCNN start from the same weights and see "
        "the same batches (cosine distance, subset fraction in the settings); so do "
        "baseline and regularized (our weight) MobileNet-V2, the paper's architecture, "
        "scored on alignment, energy and accuracy only (its last block is 2 x 2 at 32 px); the "
        "regularized model with our weight `guided_weight` and with the paper's "
        "`paper_guided_weight` (7.5e-3). "
        "Target: the label. `gradient_alignment` is the cosine of the plain and guided "
        "gradients; energy in mask of |plain gradient|; Grad-CAM: Captum `LayerGradCam` on "
        "the last block, ReLU, upsampled; AD/AG/IC from `confidence_change` (percent).",
    )
    section.metric_notes = {
        "accuracy": "held-out top-1 accuracy",
        "gradient_alignment": "cosine(plain gradient, guided backprop) (higher is better)",
        "gradient_energy_in_mask": "share of |gradient| inside the mask (higher is better)",
        "average_drop": "AD, % confidence lost on the map-masked image (lower is better)",
        "average_gain": "AG, % confidence gained (higher is better)",
        "increase_in_confidence": "IC, % of images gaining confidence (higher is better)",
        "insertion_auc": "insertion AUC (higher is better)",
        "deletion_auc": "deletion AUC (lower is better)",
    }
    for row in list(MODELS.values())[1:]:
        weight = " (paper's weight)" if "paper" in row else ""
        section.claims += _model_claims("baseline", row, weight)
        for table in ["Grad-CAM", *cam_tables]:
            for metric, better in CAM_METRICS.items():
                section.claims.append(
                    Claim(f"{table} of the regularized model{weight} is better on {metric}",
                          table, "baseline", row, metric, better)
                )
    mobile_baseline, mobile_row = MOBILENET_MODELS.values()
    section.claims += _model_claims(mobile_baseline, mobile_row, " (MobileNet-V2)")
    return section


def _model_claims(baseline: str, row: str, which: str) -> list[Claim]:
    """The ``models`` table's claims of one regularized row against its baseline."""
    return [
        Claim(f"the regularizer{which} aligns the gradient with guided backprop",
              "models", baseline, row, "gradient_alignment", "higher"),
        Claim(f"the regularized gradient{which} puts more mass on the object", "models",
              baseline, row, "gradient_energy_in_mask", "higher"),
        Claim(f"accuracy{which} drops by less than {ACCURACY_MARGIN:.2f}", "models",
              baseline, row, "accuracy", "higher", ACCURACY_MARGIN),
    ]


def _cam_scores(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, steps: int
) -> dict[str, float]:
    change = confidence_change(model, images, maps, target=labels)
    return {
        "average_drop": float(change.drop.mean()),
        "average_gain": float(change.gain.mean()),
        "increase_in_confidence": float(change.increase.mean()),
        **faithfulness_scores(model, images, maps, labels, steps),
    }


def run_guided_section(context: StudyContext) -> Section:
    """Measure the baseline and the regularized model on every seed; write a map figure.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_guided_section(tiny_context())
    >>> sorted(section.tables["models"])  # doctest: +NORMALIZE_WHITESPACE
    ['MobileNet-V2 baseline', 'MobileNet-V2 regularized', 'baseline', 'regularized',
     "regularized (paper's weight)"]
    """
    s = context.settings
    first = context.seeds[0]
    section = _new_section(list(cam_methods(context.zoo.get("simple_cnn", first))))
    context.note_missing_masks(section)
    recipes = dict(MODELS)
    if context.data.key in s.mobilenet_data_sets:
        recipes.update(MOBILENET_MODELS)
    else:
        section.notes.append(
            f"The MobileNet-V2 pair is not trained on {context.data.label} (the setting "
            f"`mobilenet_data_sets` is {list(s.mobilenet_data_sets)}): its claims are not "
            "measured here."
        )
    figure_maps: dict[str, torch.Tensor] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        for recipe, row in recipes.items():
            trained = context.zoo.get(recipe, batch.seed)
            model = trained.model
            context.log(f"guided gradients: scoring the {row} model (seed {batch.seed})")
            section.record("models", row, "accuracy", trained.accuracy)
            alignment = gradient_alignment(model, images, target=labels)
            section.record("models", row, "gradient_alignment", float(alignment.mean()))
            gradient = Saliency(model).attribute(images, target=labels, abs=True).detach()
            if batch.masks is not None:
                energy = mask_scores(gradient, batch.masks)["energy_in_mask"]
                section.record("models", row, "gradient_energy_in_mask", energy)
            if recipe in MOBILENET_MODELS:
                continue
            grad_cam = LayerGradCam(model, trained.grad_cam_layer)
            cam_maps = {
                "Grad-CAM": upsampled(
                    grad_cam.attribute(images, target=labels, relu_attributions=True).detach(),
                    images,
                )
            }
            cam_maps.update(
                {name: explain(images, labels)
                 for name, explain in cam_methods(trained).items()}
            )
            for table, maps in cam_maps.items():
                scores = _cam_scores(model, images, labels, maps, s.perturbation_steps)
                for metric, value in scores.items():
                    section.record(table, row, metric, value)
            if batch.first:
                figure_maps[f"{row}: gradient"] = gradient[: s.figure_rows]
                figure_maps[f"{row}: Grad-CAM"] = cam_maps["Grad-CAM"][: s.figure_rows]
    context.save_maps(section, "guided_examples", figure_maps,
                      "plain gradient and Grad-CAM, baseline vs regularized")
    return section
