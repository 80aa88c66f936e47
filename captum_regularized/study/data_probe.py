"""How concentrated a trained resnet18's plain gradient is on the object, per synthetic
configuration (the reason the study's synthetic track uses the harder one)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from captum.attr import Saliency

from captum_regularized.study.map_scores import mask_scores
from captum_regularized.study.model_zoo import ModelZoo
from captum_regularized.study.section import StudyContext
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import summarize

__all__ = ["gradient_concentration"]


def gradient_concentration(context: StudyContext, progress: bool = False) -> dict[str, Any]:
    """Per configuration (``"standard"`` and the context's), resnet18's held-out accuracy,
    the energy in mask of its |plain gradient| of the label and the mask's share of the
    image, each as ``summarize`` over the context's seeds.

    The context's own zoo serves its configuration; the standard one gets its own
    (same sizes, seeds and training).

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> rows = gradient_concentration(tiny_context())
    >>> sorted(rows), sorted(rows["standard"])
    (['harder', 'standard'], ['accuracy', 'energy_in_mask', 'mask_area'])
    """
    contexts = {context.settings.synthetic_configuration: context}
    if "standard" not in contexts:
        settings = replace(context.settings, synthetic_configuration="standard")
        data = StudyData(settings, "synthetic")
        zoo = ModelZoo(settings, data, device=context.device, log=context.log,
                       progress=progress)
        contexts["standard"] = replace(context, settings=settings, data=data, zoo=zoo)
    rows: dict[str, Any] = {}
    for name in sorted(contexts, key=lambda n: n != "standard"):
        values: dict[str, list[float]] = {"accuracy": [], "energy_in_mask": [], "mask_area": []}
        for batch in contexts[name].eval_batches():
            if batch.masks is None:  # synthetic data always has masks
                continue
            trained = contexts[name].zoo.get("resnet18", batch.seed)
            gradient = Saliency(trained.model).attribute(
                batch.images, target=batch.labels, abs=True
            ).detach()
            values["accuracy"].append(trained.accuracy)
            values["energy_in_mask"].append(mask_scores(gradient, batch.masks)["energy_in_mask"])
            values["mask_area"].append(float(batch.masks.float().mean()))
        rows[name] = {metric: summarize(v) for metric, v in values.items()}
    return rows
