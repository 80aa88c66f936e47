"""Section 2: RSI-Grad-CAM against Grad-CAM, on a normal and on a saturated model.

Lucas et al., arXiv 2205.10900: integrating the layer gradients along a path from a
baseline (Riemann-Stieltjes sum) avoids the vanishing gradients of a saturated softmax,
so RSI-Grad-CAM localises the object and ranks pixels better than Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import LayerGradCam
from torch import nn

from captum_regularized.attr import LayerRSIGradCam
from captum_regularized.metrics import deletion_curve, insertion_curve
from captum_regularized.study.map_scores import faithfulness_scores, mask_scores, upsampled
from captum_regularized.study.model_zoo import TrainedModel
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["MODELS", "RSI_ROWS", "explainers", "run_rsi_section"]

MODELS = {"simple_cnn": "standard", "saturated": "saturated", "resnet18": "resnet18"}
"""Zoo recipe to table name."""

RSI_ROWS: dict[str, dict[str, Any]] = {
    "RSI-Grad-CAM": {"output_transform": "softmax", "variant": "plain"},
    "RSI-Grad-CAM (authors, relu_gradients)": {
        "output_transform": "softmax", "variant": "relu_gradients", "baselines": 0.0,
    },
    "RSI-Grad-CAM (authors, unit_selection)": {
        "output_transform": "softmax", "variant": "unit_selection", "baselines": 0.0,
    },
}
"""Row name to the ``LayerRSIGradCam.attribute`` options: ours (the softmax probability,
the plain variant, the default zero baseline) and the authors' two notebooks (the
``relu_gradients`` variant of the PyTorch one, the ``unit_selection`` variant of the Keras
one, from the black image; the study's models take [0, 1] pixels without a normalisation
layer, so the black image in the model's input space is the zero input)."""

METRICS = {
    "pointing_game": ("higher", "map maximum inside the object mask (higher is better)"),
    "energy_in_mask": ("higher", "share of positive map mass inside the mask (higher is better)"),
    "deletion_auc": ("lower", "target probability as top pixels turn black (lower is better)"),
    "insertion_auc": (
        "higher", "target probability as top pixels are unblurred (higher is better)"
    ),
}

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _new_section() -> Section:
    section = Section(
        key="rsi_grad_cam",
        title="2. RSI-Grad-CAM vs Grad-CAM",
        paper='Lucas et al., "Visual explanations from deep networks via Riemann-Stieltjes '
        'integrated gradient-based localization", arXiv 2205.10900',
        paper_claim="RSI-Grad-CAM localises the evidence and ranks pixels better than "
        "Grad-CAM, notably on models whose softmax is saturated, where Grad-CAM's gradients "
        "vanish.",
        protocol="Target: the label. Layer: the last convolutional block. Grad-CAM: Captum "
        "`LayerGradCam` on the logits (ReLU on the map, as in the Grad-CAM paper); Grad-CAM "
        "(softmax): the same on the softmax probability; RSI-Grad-CAM: `LayerRSIGradCam` on "
        "the softmax probability from a zero baseline, plain variant (ours), and as the "
        "authors call it: softmax, `relu_gradients` (their PyTorch notebook) or "
        "`unit_selection` (their Keras notebook), from the black image (the zero input "
        "here: the models have no normalisation layer). Maps upsampled bilinearly. The "
        "saturated model is the same SimpleCNN trained with its logits multiplied by a "
        "constant and for more epochs; its mean max-softmax shows the saturation. "
        "resnet18: the torchvision model of section 1 (layer4).",
    )
    section.metric_notes = {name: note for name, (_, note) in METRICS.items()}
    section.metric_notes["accuracy"] = "held-out top-1 accuracy"
    section.metric_notes["mean_max_softmax"] = "mean confidence on the scored images"
    for table in MODELS.values():
        baselines = ["Grad-CAM"] + (["Grad-CAM (softmax)"] if table == "saturated" else [])
        for method in RSI_ROWS:
            for baseline in baselines:
                for metric, (better, _) in METRICS.items():
                    section.claims.append(
                        Claim(f"{table} model: {method} beats {baseline} on {metric}",
                              table, baseline, method, metric, better)
                    )
    return section


def explainers(trained: TrainedModel, rsi_steps: int) -> dict[str, Explain]:
    """Method name to ``explain(images, targets) -> (B, 1, H, W)`` input-sized maps."""
    model, layer = trained.model, trained.grad_cam_layer

    def probability(x: torch.Tensor) -> torch.Tensor:
        return model(x).softmax(dim=1)

    grad_cam = LayerGradCam(model, layer)
    softmax_grad_cam = LayerGradCam(probability, layer)
    rsi = LayerRSIGradCam(model, layer)

    def run(method: Callable[..., torch.Tensor], **kwargs: object) -> Explain:
        return lambda x, t: upsampled(method(x, target=t, **kwargs).detach(), x)

    return {
        "Grad-CAM": run(grad_cam.attribute, relu_attributions=True),
        "Grad-CAM (softmax)": run(softmax_grad_cam.attribute, relu_attributions=True),
        **{
            name: run(rsi.attribute, n_steps=rsi_steps, internal_batch_size=512, **options)
            for name, options in RSI_ROWS.items()
        },
    }


def run_rsi_section(context: StudyContext) -> Section:
    """Measure both models on every seed; write the curve and map figures.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_rsi_section(tiny_context())
    >>> sorted(section.tables["saturated"])[:3]
    ['Grad-CAM', 'Grad-CAM (softmax)', 'RSI-Grad-CAM']
    >>> sorted(section.tables["saturated"])[3:]
    ['RSI-Grad-CAM (authors, relu_gradients)', 'RSI-Grad-CAM (authors, unit_selection)']
    """
    section = _new_section()
    s = context.settings
    context.note_missing_masks(section)
    figure_maps: dict[str, torch.Tensor] = {}
    curves: dict[str, dict[str, object]] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        for recipe, table in MODELS.items():
            trained = context.zoo.get(recipe, batch.seed)
            model: nn.Module = trained.model
            context.log(f"RSI-Grad-CAM: scoring the {table} model (seed {batch.seed})")
            section.record("models", table, "accuracy", trained.accuracy)
            section.record("models", table, "mean_max_softmax", trained.mean_max_softmax)
            for name, explain in explainers(trained, s.rsi_steps).items():
                maps = explain(images, labels)
                scores = {**mask_scores(maps, batch.masks),
                          **faithfulness_scores(model, images, maps, labels, s.perturbation_steps)}
                for metric, value in scores.items():
                    section.record(table, name, metric, value)
                if batch.first and table != "resnet18":
                    figure_maps[f"{table}: {name}"] = maps[: s.figure_rows]
                if batch.first and table == "saturated":
                    for kind, curve in (("deletion", deletion_curve),
                                        ("insertion", insertion_curve)):
                        result = curve(model, images, maps, target=labels,
                                       steps=s.perturbation_steps)
                        curves.setdefault(f"saturated model, {kind}", {})[name] = (
                            result.fractions, result.scores)
    context.save_maps(section, "rsi_examples", figure_maps, "Grad-CAM and RSI-Grad-CAM maps")
    context.save_curves(section, "rsi_curves", curves,
                        "deletion/insertion curves, saturated model",
                        ylabel="target probability", xlabel="fraction of pixels perturbed")
    return section
