"""Paper 2 (Lucas et al., arXiv 2205.10900): RSI-Grad-CAM against Grad-CAM, saturated softmax."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam

from captum_regularized.attr import LayerRSIGradCam
from captum_regularized.metrics import map_similarity
from captum_regularized.study.map_scores import faithfulness_scores, mask_scores, upsampled
from captum_regularized.study.model_zoo import TrainedModel
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["MODELS", "STEP_TOLERANCE", "relative_change", "run_rsi_section"]

MODELS = {"saturated": "saturated SimpleCNN", "simple_cnn": "SimpleCNN"}
"""Zoo recipe to table name (on ``simple_cnn`` the claims are extra observations)."""

GRAD_CAM, RSI = "Grad-CAM (softmax)", "RSI-Grad-CAM (authors)"

STEP_TOLERANCE = 0.05  # the stability claim: 4 x the steps move the map by < 5 %

LayerMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def relative_change(maps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per example ``||a - b|| / max(||a||, ||b||)`` (0 where both maps are zero).

    Examples
    --------
    >>> a = torch.ones(2, 1, 2, 2)
    >>> relative_change(a, torch.stack([a[0], 2 * a[1]])).tolist()
    [0.0, 0.5]
    """
    a, b = maps.flatten(1).double(), other.flatten(1).double()
    scale = torch.maximum(a.norm(dim=1), b.norm(dim=1))
    change = (a - b).norm(dim=1) / scale.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(scale > 0, change, torch.zeros_like(change))


def _layer_maps(trained: TrainedModel, steps: int) -> dict[str, LayerMap]:
    """Grad-CAM on the class probability and RSI-Grad-CAM as its authors call it."""
    model, layer = trained.model, trained.cam_layer

    def probability(x: torch.Tensor) -> torch.Tensor:
        return model(x).softmax(dim=1)

    grad_cam = LayerGradCam(probability, layer)
    rsi = LayerRSIGradCam(model, layer)
    return {
        GRAD_CAM: lambda x, t: grad_cam.attribute(x, target=t, relu_attributions=True).detach(),
        RSI: lambda x, t: rsi.attribute(
            x, target=t, n_steps=steps, baselines=0.0, output_transform="softmax",
            variant="relu_gradients", internal_batch_size=1024,
        ).detach(),
    }


def _new_section() -> Section:
    section = Section(
        key="rsi_grad_cam",
        title="RSI-Grad-CAM vs Grad-CAM under a saturated softmax",
        paper=2,
        citation='Lucas et al., "Visual explanations from deep networks via Riemann-'
        'Stieltjes integrated gradient-based localization", arXiv 2205.10900',
        paper_claim="When the softmax saturates, Grad-CAM's gradients vanish; RSI-Grad-CAM "
        "integrates them along a path from a baseline, so its map still localises the "
        "object, agrees with Integrated Gradients and is numerically stable.",
        protocol="Target: the label. Layer: the last convolutional block (its map size is "
        "in the model table). Grad-CAM (softmax): Captum `LayerGradCam` on the softmax "
        "probability, ReLU on the map. RSI-Grad-CAM as in the authors' PyTorch notebook: "
        "softmax output, `relu_gradients`, the black image as baseline, `rsi_steps` "
        "intervals. Mask scores on maps upsampled bilinearly; agreement with Integrated "
        "Gradients (probability, black baseline, `ig_steps`): Spearman correlation of "
        "the layer map with |IG| summed over channels and average-pooled to the map's "
        "size; noise stability: relative change ||a - b|| / max(||a||, ||b||) of the layer "
        "map under uniform input noise of radius `stability_noise` (mean of "
        "`stability_samples` draws); step stability: the same change between `rsi_steps` "
        "and 4 x `rsi_steps` intervals, judged against a tolerance of "
        f"{STEP_TOLERANCE:g}.",
    )
    section.metric_notes = {
        "energy_in_mask": "share of the map's mass inside the mask (higher is better)",
        "pointing_game": "map maximum inside the mask (higher is better)",
        "ig_agreement": "Spearman correlation with pooled |Integrated Gradients| (higher "
        "is better)",
        "noise_change": "relative map change under tiny input noise (lower is better)",
        "step_change": "relative map change when the steps quadruple (lower is better)",
        "deletion_auc": "target probability as top pixels turn black (lower is better)",
        "insertion_auc": "target probability as top pixels are unblurred (higher is "
        "better)",
    }
    comparisons = [
        ("localises the object better (energy in mask)", "energy_in_mask", "higher"),
        ("hits the object more often (pointing game)", "pointing_game", "higher"),
        ("agrees better with Integrated Gradients", "ig_agreement", "higher"),
        ("changes less under tiny input noise", "noise_change", "lower"),
    ]
    for recipe, table in MODELS.items():
        extra = recipe != "saturated"
        for text, metric, better in comparisons:
            section.claims.append(Claim(2, f"{table}: RSI-Grad-CAM {text} than Grad-CAM",
                                        table, GRAD_CAM, RSI, metric, better, extra=extra))
        if not extra:
            section.claims.append(Claim(
                2, f"{table}: RSI-Grad-CAM's map moves by less than {STEP_TOLERANCE:g} when "
                "its steps quadruple", table, "tolerance", RSI, "step_change", "lower"))
        for metric, better in (("deletion_auc", "lower"), ("insertion_auc", "higher")):
            section.claims.append(Claim(
                2, f"{table}: RSI-Grad-CAM has a better {metric.replace('_', ' ')} than "
                "Grad-CAM", table, GRAD_CAM, RSI, metric, better, extra=True))
    return section


def _ig_agreement(trained: TrainedModel, images: torch.Tensor, targets: torch.Tensor,
                  maps: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """Spearman correlation of each layer map with |IG| pooled to the map's size."""
    model = trained.model
    ig = IntegratedGradients(lambda x: model(x).softmax(dim=1)).attribute(
        images, baselines=0.0, target=targets, n_steps=steps, internal_batch_size=1024
    ).detach()
    reference = ig.abs().sum(dim=1, keepdim=True)
    agreement = {}
    for name, layer_map in maps.items():
        height, width = layer_map.shape[-2:]
        pooled = F.adaptive_avg_pool2d(reference, (height, width))
        agreement[name] = map_similarity(layer_map[:, 0], pooled[:, 0]).spearman.double()
    return agreement


def _noise_change(explain: LayerMap, images: torch.Tensor, targets: torch.Tensor,
                  clean: torch.Tensor, radius: float, draws: int,
                  generator: torch.Generator) -> torch.Tensor:
    changes = []
    for _ in range(draws):
        noise = (2 * torch.rand(images.shape, generator=generator) - 1) * radius
        noisy = (images + noise.to(images.device)).clamp(0.0, 1.0)
        changes.append(relative_change(clean, explain(noisy, targets)))
    return torch.stack(changes).mean(dim=0)


def run_rsi_section(context: StudyContext) -> Section:
    """Measure Grad-CAM and RSI-Grad-CAM on both models and every seed; draw the maps.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_rsi_section(tiny_context())
    >>> sorted(section.tables["saturated SimpleCNN"])
    ['Grad-CAM (softmax)', 'RSI-Grad-CAM (authors)', 'tolerance']
    >>> [v.verdict == "not measured" for v in section.verdicts()].count(True)
    0
    """
    section = _new_section()
    s = context.settings
    context.note_missing_masks(section)
    figure_maps: dict[str, torch.Tensor] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        generator = torch.Generator().manual_seed(batch.seed)
        for recipe, table in MODELS.items():
            trained = context.zoo.get(recipe, batch.seed)
            context.log(f"RSI-Grad-CAM: scoring the {table} (seed {batch.seed})")
            explainers = _layer_maps(trained, s.rsi_steps)
            maps = {name: explain(images, labels) for name, explain in explainers.items()}
            scores: dict[str, dict[str, torch.Tensor]] = {name: {} for name in maps}
            for name, layer_map in maps.items():
                section.uses(table, name, trained, cam=True)
                full = upsampled(layer_map, images)
                scores[name].update(mask_scores(full, batch.masks))
                scores[name].update(faithfulness_scores(trained.model, images, full, labels,
                                                        s.perturbation_steps))
                scores[name]["noise_change"] = _noise_change(
                    explainers[name], images, labels, layer_map, s.stability_noise,
                    s.stability_samples, generator)
                if batch.first:
                    figure_maps[f"{table}: {name}"] = full[: s.figure_rows]
            for name, values in _ig_agreement(trained, images, labels, maps,
                                              s.ig_steps).items():
                scores[name]["ig_agreement"] = values
            finer = _layer_maps(trained, 4 * s.rsi_steps)[RSI](images, labels)
            scores[RSI]["step_change"] = relative_change(maps[RSI], finer)
            scores["tolerance"] = {"step_change": torch.full((len(images),), STEP_TOLERANCE)}
            section.uses(table, "tolerance", trained)
            for name, metrics in scores.items():
                for metric, values in metrics.items():
                    section.record(table, name, metric, values)
    context.save_maps(section, "rsi_examples", figure_maps,
                      "Grad-CAM (softmax) and RSI-Grad-CAM maps")
    return section
