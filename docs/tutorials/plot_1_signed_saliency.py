"""
Signed saliency maps
====================

A plain saliency map is ``|d y_t / d x|``: it says *where* the class score is
sensitive, but the absolute value throws away *which way* each pixel pushes. Llorente
et al. (arXiv 2309.12913) split the gradient by its attitude instead:

* **positive** -- pixels whose increase raises the target score;
* **negative** -- pixels whose increase lowers it;
* **active** -- pixels whose increase raises the target score *more than* every other
  class score (it makes the target win);
* **inactive** -- pixels whose increase favours the other classes over the target.

This tutorial computes the four maps with
:mod:`captum_regularized.attr` next to Captum's :class:`~captum.attr.Saliency` and
:class:`~captum.attr.NoiseTunnel`, on a small CNN trained for a few seconds on
:class:`~captum_regularized.datasets.SyntheticShapes`, whose label is decided by the
red object only.
"""

# %%
# A small model on synthetic shapes
# ---------------------------------
# Each image shows one red *target* shape (its shape is the label) and two distractor
# shapes of other colours. The data set also returns the target's mask, our ground
# truth for where the evidence is.
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import NoiseTunnel, Saliency
from torch.utils.data import TensorDataset

from captum_regularized.attr import (
    ActiveSaliency,
    InactiveSaliency,
    NegativeSaliency,
    PositiveSaliency,
    signed_saliency_maps,
)
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.models import SimpleCNN, evaluate_accuracy, train_classifier
from captum_regularized.visualization import plot_attributions

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
torch.manual_seed(0)
shapes = SyntheticShapes(num_samples=2000, image_size=32, num_classes=4, seed=0)
held_out = SyntheticShapes(num_samples=200, image_size=32, num_classes=4, seed=1)
# ``render`` draws many items at once (much faster than indexing one by one)
train_images, train_labels, _ = shapes.render(list(range(len(shapes))))
test_set = TensorDataset(*held_out.render(list(range(len(held_out))))[:2])

model = SimpleCNN(num_classes=4, width=8)
train_classifier(
    model, TensorDataset(train_images, train_labels), epochs=3, batch_size=64, lr=5e-3,
    progress=False,
)
model.eval()
print(f"held-out accuracy: {evaluate_accuracy(model, test_set):.3f}")

images, labels, masks = held_out.render(list(range(4)))
print("classes:", [held_out.shape_names[int(label)] for label in labels])

# %%
# Captum's saliency, and the four signed maps
# -------------------------------------------
# Every method is built and called exactly like Captum's. ``target`` takes any Captum
# target form; here the true labels.
saliency = Saliency(model).attribute(images, target=labels)  # |gradient|
positive = PositiveSaliency(model).attribute(images, target=labels)
negative = NegativeSaliency(model).attribute(images, target=labels)
active = ActiveSaliency(model).attribute(images, target=labels)
inactive = InactiveSaliency(model).attribute(images, target=labels)

fig, axes = plot_attributions(
    images,
    {
        "Saliency": saliency,
        "positive": positive,
        "negative": negative,
        "active": active,
        "inactive": inactive,
    },
    mask=masks,
    signed=False,
    row_labels=[held_out.shape_names[int(label)] for label in labels],
)
fig.suptitle("|gradient| and its four signed parts (green: ground-truth object)")

# %%
# The positive and negative maps split the gradient by sign, so (channel by channel)
# they add up to Captum's signed gradient, and their sum of magnitudes is Captum's
# ``Saliency``:
signed_gradient = Saliency(model).attribute(images, target=labels, abs=False)
print(
    "positive - negative == gradient:",
    torch.allclose(positive - negative, signed_gradient, atol=1e-6),
)
print(
    "positive + negative == |gradient|:",
    torch.allclose(positive + negative, saliency, atol=1e-6),
)

# %%
# All maps from one pass
# ----------------------
# :func:`~captum_regularized.attr.signed_saliency_maps` returns the signed gradient
# and the four maps while running the model and the per-class gradients once. With
# ``target=None`` each image is explained for its predicted class. Shown signed, the
# gradient's two directions get the two ends of a diverging colormap centred at zero.
maps = signed_saliency_maps(model, images, target=None)
fig, axes = plot_attributions(
    images,
    {"gradient": maps["gradient"], "active": maps["active"], "inactive": maps["inactive"]},
    mask=masks,
    signed={"gradient": True},
    colorbar="each",
)

# %%
# Smoothing with Captum's NoiseTunnel
# -----------------------------------
# Our classes subclass Captum's ``GradientAttribution``, so Captum's wrappers take
# them as they are: here SmoothGrad averages the active map over noisy copies.
smooth_active = NoiseTunnel(ActiveSaliency(model)).attribute(
    images, nt_type="smoothgrad", nt_samples=8, stdevs=0.1, target=labels
)
smooth_plain = NoiseTunnel(Saliency(model)).attribute(
    images, nt_type="smoothgrad", nt_samples=8, stdevs=0.1, target=labels
)
fig, axes = plot_attributions(
    images,
    {"SmoothGrad(Saliency)": smooth_plain, "SmoothGrad(active)": smooth_active},
    mask=masks,
    signed=False,
)
plt.show()
