"""
Evaluating explanations
=======================

There is no single "correct" saliency map, so explanations are judged by several
complementary tests. This tutorial scores Captum's and this package's maps on one
small model with:

* **faithfulness** -- :func:`~captum_regularized.metrics.deletion_auc` /
  :func:`~captum_regularized.metrics.insertion_auc` (remove or restore the top pixels
  and watch the class probability), the allegiance protocol
  (:func:`~captum_regularized.metrics.allegiance_deletion_auc`), and Captum's
  :func:`~captum.metrics.infidelity`;
* **localisation** -- :func:`~captum_regularized.metrics.pointing_game` and
  :func:`~captum_regularized.metrics.energy_pointing_game` against the ground-truth
  masks of :class:`~captum_regularized.datasets.SyntheticShapes`;
* **robustness and sparsity** -- Captum's :func:`~captum.metrics.sensitivity_max` and
  :func:`~captum_regularized.metrics.gini_sparseness`.

Every metric of :mod:`captum_regularized.metrics` takes a batch and returns one value
per example (``.mean()`` is the number papers report), computed on the inputs' device.
The last section scores the same methods with Quantus through the adapter
:func:`captum_regularized.integrations.quantus.explain_func`.
"""

# %%
# Model, data and maps
# --------------------
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from captum.metrics import infidelity, sensitivity_max
from torch.utils.data import TensorDataset

from captum_regularized.attr import ActiveSaliency, LayerRSIGradCam, PositiveSaliency
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import (
    allegiance_deletion_auc,
    deletion_auc,
    deletion_curve,
    energy_pointing_game,
    gini_sparseness,
    insertion_auc,
    pointing_game,
)
from captum_regularized.models import SimpleCNN, train_classifier
from captum_regularized.visualization import plot_attributions, plot_curves

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
torch.manual_seed(0)
shapes = SyntheticShapes(num_samples=2000, image_size=32, num_classes=4, seed=0)
model = SimpleCNN(num_classes=4, width=8)
train_classifier(
    model, TensorDataset(*shapes.render(list(range(len(shapes))))[:2]),
    epochs=3, batch_size=64, lr=5e-3, progress=False,
)
model.eval()
held_out = SyntheticShapes(num_samples=32, image_size=32, num_classes=4, seed=1)
images, labels, masks = held_out.render(list(range(len(held_out))))

size = images.shape[-2:]
methods = {
    "Saliency": lambda x, target: Saliency(model).attribute(x, target=target),
    "IntegratedGradients": lambda x, target: IntegratedGradients(model).attribute(
        x, target=target, n_steps=16
    ).abs(),
    "PositiveSaliency": lambda x, target: PositiveSaliency(model).attribute(x, target=target),
    "ActiveSaliency": lambda x, target: ActiveSaliency(model).attribute(x, target=target),
    "Grad-CAM": lambda x, target: LayerAttribution.interpolate(
        LayerGradCam(model, model.block3).attribute(x, target=target, relu_attributions=True),
        tuple(x.shape[-2:]), interpolate_mode="bilinear",
    ).expand_as(x).contiguous(),
    "RSI-Grad-CAM": lambda x, target: LayerAttribution.interpolate(
        LayerRSIGradCam(model, model.block3).attribute(x, target=target, n_steps=16),
        tuple(x.shape[-2:]), interpolate_mode="bilinear",
    ).expand_as(x).contiguous(),
}
maps = {name: explain(images, labels) for name, explain in methods.items()}
fig, axes = plot_attributions(
    images[:3], {name: m[:3] for name, m in maps.items()}, mask=masks[:3], signed=False
)

# %%
# Scores
# ------
# Captum's ``infidelity`` needs a perturbation function: here small Gaussian noise.
# ``sensitivity_max`` re-runs the explanation on inputs perturbed within a small
# ball, so it gets the explanation function itself (Captum expands the keyword
# argument named ``target`` to the perturbed copies).


def on_tuples(explain):
    """``sensitivity_max`` calls the explanation with a tuple of inputs and expects a
    tuple back; our lambdas take and return a tensor."""
    return lambda inputs, target: (explain(inputs[0], target),)


def gaussian_noise(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = 0.03 * torch.randn_like(inputs)
    return noise, inputs - noise


columns = ["deletion", "insertion", "allegiance", "infidelity", "pointing", "energy",
           "sensitivity", "gini"]
print(f"{'method':20s} " + " ".join(f"{column:>11s}" for column in columns))
for name, attribution in maps.items():
    scores = [
        deletion_auc(model, images, attribution, target=labels, steps=16).mean(),
        insertion_auc(
            model, images, attribution, target=labels, steps=16, substrate="blur"
        ).mean(),
        allegiance_deletion_auc(model, images, attribution).auc,
        infidelity(
            model, gaussian_noise, images, attribution, target=labels, n_perturb_samples=4
        ).mean(),
        pointing_game(attribution, masks).mean(),
        energy_pointing_game(attribution, masks).mean(),
        sensitivity_max(
            on_tuples(methods[name]), (images[:8],), target=labels[:8],
            perturb_radius=0.02, n_perturb_samples=2,
        ).mean(),
        gini_sparseness(attribution).mean(),
    ]
    print(f"{name:20s} " + " ".join(f"{float(score):11.3f}" for score in scores))

# %%
# Lower is better for deletion, allegiance, infidelity and sensitivity; higher for
# insertion, the pointing games and (if you want sparse maps) Gini.
#
# Deletion curves
# ---------------
# :func:`~captum_regularized.visualization.plot_curves` draws the curves behind the
# areas -- the metric's result records plot as they are.
fig, ax = plot_curves(
    {name: deletion_curve(model, images, attribution, target=labels, steps=16)
     for name, attribution in maps.items()},
    title="deletion (lower is better)", ylabel="class probability", band=False,
)
plt.show()

# %%
# Quantus through the adapter
# ---------------------------
# `Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_
# metrics take an ``explain_func(model, inputs, targets, **kwargs) -> ndarray``.
# :func:`captum_regularized.integrations.quantus.explain_func` is one for every method
# of this package and of Captum, named by string (layer methods take ``layer=``).
# Quantus' ``Sparseness`` is the same Gini index as
# :func:`~captum_regularized.metrics.gini_sparseness`, and its ``PointingGame`` the same
# test as :func:`~captum_regularized.metrics.pointing_game`, so the two columns of each
# pair below agree.
import numpy as np
import quantus

from captum_regularized.integrations.quantus import explain_func

x_batch, y_batch = images.numpy(), labels.numpy()
s_batch = masks.float().numpy()
print(f"{'method':18s} {'quantus gini':>12s} {'ours':>7s} {'quantus pointing':>16s} {'ours':>7s}")
for method in ["Saliency", "PositiveSaliency", "ActiveSaliency"]:
    kwargs = {"method": method, "channel_reduction": "max"}
    quantus_gini = quantus.Sparseness(disable_warnings=True)(
        model=model, x_batch=x_batch, y_batch=y_batch, explain_func=explain_func,
        explain_func_kwargs=kwargs, device="cpu",
    )
    quantus_pointing = quantus.PointingGame(disable_warnings=True)(
        model=model, x_batch=x_batch, y_batch=y_batch, s_batch=s_batch,
        explain_func=explain_func, explain_func_kwargs=kwargs, device="cpu",
    )
    ours = torch.from_numpy(explain_func(model, x_batch, y_batch, **kwargs))
    print(
        f"{method:18s} {np.mean(quantus_gini):12.3f} {gini_sparseness(ours).mean():7.3f} "
        f"{np.mean(quantus_pointing):16.3f} {pointing_game(ours, masks).float().mean():7.3f}"
    )
