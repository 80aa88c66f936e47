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

Further sections add what users of Captum have asked for: Grad-CAM++ and Score-CAM,
the parameter-randomisation sanity check, ROAD, the batched max-sensitivity and a
targeted attack on the map, and ROAR / DiffROAR (remove the top pixels, retrain).

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

# %%
# More CAMs: Grad-CAM++ and Score-CAM
# -----------------------------------
# :class:`~captum_regularized.attr.LayerGradCamPlusPlus` and
# :class:`~captum_regularized.attr.LayerScoreCam` are called like Captum's
# ``LayerGradCam`` and give pytorch-grad-cam's maps (before its rescaling), batched and
# on the inputs' device. Score-CAM needs no gradient: one masked forward pass per
# channel and example, in passes of at most ``internal_batch_size`` rows.
from captum_regularized.attr import LayerGradCamPlusPlus, LayerScoreCam


def upsampled(cams: torch.Tensor) -> torch.Tensor:
    return LayerAttribution.interpolate(cams, tuple(size), interpolate_mode="bilinear")


cams = {
    "Grad-CAM": upsampled(LayerGradCam(model, model.block3).attribute(
        images, target=labels, relu_attributions=True)),
    "Grad-CAM++": upsampled(LayerGradCamPlusPlus(model, model.block3).attribute(
        images, target=labels)),
    "Score-CAM": upsampled(LayerScoreCam(model, model.block3).attribute(
        images, target=labels, internal_batch_size=256)),
}
for name, cam in cams.items():
    print(f"{name:11s} pointing game {pointing_game(cam, masks).float().mean():.3f}  "
          f"energy {energy_pointing_game(cam, masks).mean():.3f}")

# %%
# Sanity checks: randomise the model's parameters
# -----------------------------------------------
# Adebayo et al.'s test: a map that explains the model must change when the model's
# weights are re-initialised, layer by layer from the output down (cascading).
# :func:`~captum_regularized.metrics.model_parameter_randomisation` works on a copy
# (the model is left as found), takes any attribution class (ours or Captum's) and gives
# per-example similarities after each layer: Spearman rank correlation of the absolute
# and the signed maps, SSIM and cosine. A map that stays similar to itself as the
# weights go is explaining the input, not the model.
from captum_regularized.metrics import model_parameter_randomisation

for method in (Saliency, PositiveSaliency):
    check = model_parameter_randomisation(model, images[:8], labels[:8], method)
    spearman = check.curve("spearman_abs").mean(1)
    print(f"{method.__name__:16s} " + "  ".join(
        f"{layer}: {value:.2f}" for layer, value in zip(check.layers, spearman.tolist())))

# %%
# ROAD: remove and debias
# -----------------------
# Deleting pixels (setting them to 0 or blurring them) lets the shape of the removed
# region leak the answer. ROAD (Rong et al. 2022) fills the removed pixels by noisy
# linear imputation from their neighbours, removes the most relevant (MoRF, lower is
# better) or least relevant (LeRF, higher is better) pixels first, and reports the change
# of the class probability averaged over the removal percentages.
from captum_regularized.metrics import road

print(f"{'method':20s} {'MoRF':>7s} {'LeRF':>7s} {'combined':>9s}")
for name, attribution in maps.items():
    scores = road(model, images, attribution, target=labels,
                  generator=torch.Generator().manual_seed(0))
    print(f"{name:20s} {scores.morf_mean.mean():7.3f} {scores.lerf_mean.mean():7.3f} "
          f"{scores.combined.mean():9.3f}")

# %%
# Robustness: random noise and a targeted attack
# ----------------------------------------------
# :func:`~captum_regularized.metrics.max_sensitivity` is Captum's ``sensitivity_max``
# (the largest relative change of the map under uniform noise in a small ball), batched.
# :func:`~captum_regularized.metrics.interpretation_attack` is Ghorbani et al.'s
# top-k attack: a perturbation within an L-infinity ball that keeps the predicted class
# and pushes the saliency map off its top-k pixels. The intersection of the top-k
# pixels before and after says how much of the explanation survives.
from captum_regularized.metrics import interpretation_attack, max_sensitivity

sensitivity = max_sensitivity(Saliency(model), images[:8], labels[:8], radius=0.02,
                              n_samples=4, generator=torch.Generator().manual_seed(0))
attack = interpretation_attack(model, images[:8], labels[:8], epsilon=4 / 255, steps=10,
                               k=20)
print(f"max-sensitivity of Saliency {sensitivity.mean():.3f}; top-20 intersection after "
      f"the attack {attack.intersection.mean():.2f} (label kept for "
      f"{int(attack.label_kept.sum())} of 8 images)")

# %%
# ROAR and DiffROAR: remove and retrain
# -------------------------------------
# A map can only be judged by deletion if the model has not learnt to read the deletions.
# ROAR (Hooker et al. 2019) removes the top-k % pixels of each map from the training *and*
# the test images, retrains a fresh model with the same recipe and measures the test
# accuracy; DiffROAR (Gong et al. 2024) is the accuracy under a random removal minus the
# accuracy under the map's: larger means the map found what the model needs. It retrains
# twice per fraction, so it takes your training function and data loaders.
from torch.utils.data import DataLoader

from captum_regularized.metrics import remove_and_retrain

train_images, train_labels, _ = shapes.render(list(range(len(shapes))))
test_shapes = SyntheticShapes(num_samples=256, image_size=32, num_classes=4, seed=2)
test_images, test_labels, _ = test_shapes.render(list(range(len(test_shapes))))


def retrain(loader: DataLoader) -> torch.nn.Module:
    """The recipe of ``model`` above, on the loader's (pixel-removed) images."""
    torch.manual_seed(0)
    fresh = SimpleCNN(num_classes=4, width=8)
    train_classifier(fresh, loader.dataset, epochs=3, batch_size=64, lr=5e-3, progress=False)
    return fresh.eval()


roar = remove_and_retrain(
    retrain,
    DataLoader(TensorDataset(train_images, train_labels), batch_size=64),
    DataLoader(TensorDataset(test_images, test_labels), batch_size=64),
    Saliency(model),
    fractions=(30, 70),
    model=model,
    progress=False,
)
for k, accuracy, random_accuracy, diff in zip(
    roar.fractions, roar.accuracy, roar.random_accuracy, roar.diff_roar
):
    print(f"{k:4.0f} % removed: accuracy {accuracy:.2f} by the map, {random_accuracy:.2f} "
          f"at random, DiffROAR {diff:+.2f}")
