"""Section 2: RSI-Grad-CAM against Grad-CAM, on a normal and on a saturated model.

Lucas et al., arXiv 2205.10900: integrating the layer gradients along a path from a
baseline (Riemann-Stieltjes sum) avoids the vanishing gradients of a saturated softmax,
so RSI-Grad-CAM localises the object and ranks pixels better than Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerGradCam
from torch import nn

from captum_regularized.attr import LayerRSIGradCam
from captum_regularized.metrics import deletion_curve, insertion_curve
from captum_regularized.study.figures import save_curves_figure, save_maps_figure
from captum_regularized.study.map_scores import faithfulness_scores, mask_scores, upsampled
from captum_regularized.study.model_zoo import TrainedModel
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["MODELS", "run_rsi_section"]

MODELS = {"simple_cnn": "standard", "saturated": "saturated"}
"""Zoo recipe to table name."""

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
        "the softmax probability from a zero baseline. Maps upsampled bilinearly. The "
        "saturated model is the same SimpleCNN trained with its logits multiplied by a "
        "constant and for more epochs; its mean max-softmax shows the saturation.",
    )
    section.metric_notes = {name: note for name, (_, note) in METRICS.items()}
    section.metric_notes["accuracy"] = "held-out top-1 accuracy"
    section.metric_notes["mean_max_softmax"] = "mean confidence on the scored images"
    for table in MODELS.values():
        baselines = ["Grad-CAM"] + (["Grad-CAM (softmax)"] if table == "saturated" else [])
        for baseline in baselines:
            for metric, (better, _) in METRICS.items():
                section.claims.append(
                    Claim(f"{table} model: RSI-Grad-CAM beats {baseline} on {metric}",
                          table, baseline, "RSI-Grad-CAM", metric, better)
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
        "RSI-Grad-CAM": run(
            rsi.attribute, n_steps=rsi_steps, output_transform="softmax", internal_batch_size=512
        ),
    }


def run_rsi_section(context: StudyContext) -> Section:
    """Measure both models on every seed; write the curve and map figures.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_rsi_section(tiny_context())
    >>> sorted(section.tables["saturated"])
    ['Grad-CAM', 'Grad-CAM (softmax)', 'RSI-Grad-CAM']
    """
    section = _new_section()
    s = context.settings
    figure_maps: dict[str, torch.Tensor] = {}
    curves: dict[str, dict[str, object]] = {}
    for seed in context.seeds:
        seed_data = context.data.for_seed(seed)
        images = seed_data.test_images[: s.eval_examples].to(context.device)
        labels = seed_data.test_labels[: s.eval_examples].to(context.device)
        masks = seed_data.test_masks
        masks = None if masks is None else masks[: s.eval_examples].to(context.device)
        for recipe, table in MODELS.items():
            trained = context.zoo.get(recipe, seed)
            model: nn.Module = trained.model
            context.log(f"RSI-Grad-CAM: scoring the {table} model (seed {seed})")
            section.record("models", table, "accuracy", trained.accuracy)
            section.record("models", table, "mean_max_softmax", trained.mean_max_softmax)
            for name, explain in explainers(trained, s.rsi_steps).items():
                maps = explain(images, labels)
                scores = {**mask_scores(maps, masks),
                          **faithfulness_scores(model, images, maps, labels, s.perturbation_steps)}
                for metric, value in scores.items():
                    section.record(table, name, metric, value)
                if seed == context.seeds[0]:
                    figure_maps[f"{table}: {name}"] = maps[: s.figure_rows]
                    if table == "saturated":
                        for kind, curve in (("deletion", deletion_curve),
                                            ("insertion", insertion_curve)):
                            result = curve(model, images, maps, target=labels,
                                           steps=s.perturbation_steps)
                            curves.setdefault(f"saturated model, {kind}", {})[name] = (
                                result.fractions, result.scores)
    first = context.seeds[0]
    seed_data = context.data.for_seed(first)
    rows = slice(0, s.figure_rows)
    file = save_maps_figure(
        context.out / "rsi_examples.png", seed_data.test_images[rows], figure_maps,
        masks=None if seed_data.test_masks is None else seed_data.test_masks[rows],
    )
    section.figures.append((file.name, f"Grad-CAM and RSI-Grad-CAM maps (seed {first})"))
    file = save_curves_figure(
        context.out / "rsi_curves.png", curves, ylabel="target probability",
        xlabel="fraction of pixels perturbed",
    )
    section.figures.append(
        (file.name, f"deletion/insertion curves, saturated model (seed {first})")
    )
    return section
