"""
Training for readable gradients: GuidedGradientRegularizer
==========================================================

Guided backpropagation gives crisp maps but is not faithful to the model; the plain
input gradient is faithful but noisy. Torres Figueroa et al. (arXiv 2404.15024) close
the gap from the training side: add a penalty on the distance between the plain
gradient and the guided one, so the model learns to have gradients that look like
guided backprop.

:class:`~captum_regularized.regularizers.GuidedGradientRegularizer` is such a penalty,
in the form :func:`~captum_regularized.models.train_classifier` takes as ``loss=``:
``reg(images, labels)`` returns ``(logits, penalty)`` and the training loss is
``cross_entropy(logits, labels) + penalty``. This tutorial trains the same small CNN
twice -- same initial weights, same batches -- with and without it, and compares the
plain saliency maps.
"""

# %%
# Two models from the same start
# ------------------------------
import copy
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import GuidedBackprop, Saliency
from torch.utils.data import TensorDataset

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import energy_pointing_game, gradient_alignment
from captum_regularized.models import SimpleCNN, evaluate_accuracy, train_classifier
from captum_regularized.regularizers import GuidedGradientRegularizer
from captum_regularized.visualization import plot_attributions

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
torch.manual_seed(0)
shapes = SyntheticShapes(num_samples=2000, image_size=32, num_classes=4, seed=0)
train_set = TensorDataset(*shapes.render(list(range(len(shapes))))[:2])
held_out = SyntheticShapes(num_samples=64, image_size=32, num_classes=4, seed=1)
images, labels, masks = held_out.render(list(range(len(held_out))))

baseline = SimpleCNN(num_classes=4, width=8)
regularized = copy.deepcopy(baseline)
settings = dict(epochs=3, batch_size=64, lr=5e-3, progress=False, seed=0)

train_classifier(baseline, train_set, **settings)
# The paper's weight is 7.5e-3; briefly trained small models need a larger one to
# show the effect within a few seconds of training.
regularizer = GuidedGradientRegularizer(regularized, weight=0.04, distance="cosine")
history = train_classifier(regularized, train_set, loss=regularizer, **settings)
print(f"cos(plain, guided) on the last training batch: {regularizer.last_cosine:.3f}")

for model in (baseline, regularized):
    model.eval()
test_set = TensorDataset(images, labels)
for name, model in {"baseline": baseline, "regularized": regularized}.items():
    print(f"{name:12s} held-out accuracy: {evaluate_accuracy(model, test_set):.3f}")

# %%
# Does the gradient look more like guided backprop?
# -------------------------------------------------
# :func:`~captum_regularized.metrics.gradient_alignment` is the per-example cosine of
# the plain and guided gradients; the energy pointing game is the share of the
# (absolute) gradient that falls on the object that decides the label.
for name, model in {"baseline": baseline, "regularized": regularized}.items():
    alignment = gradient_alignment(model, images, target=labels)
    gradient = Saliency(model).attribute(images, target=labels)
    energy = energy_pointing_game(gradient, masks)
    print(
        f"{name:12s} alignment {alignment.mean():.3f}   "
        f"gradient energy on the object {energy.mean():.3f}"
    )

# %%
# In a Lightning ``training_step``
# --------------------------------
# The regularizer is a plain callable that keeps a reference to the model, so it fits
# wherever a loss is computed. In a ``LightningModule`` build it once in ``__init__``
# and return the summed loss from ``training_step``; Lightning runs ``backward`` (the
# double backpropagation happens there) and the optimizer step:
#
# .. code-block:: python
#
#    import lightning as L
#    import torch.nn.functional as F
#
#    class GuidedAlignedClassifier(L.LightningModule):
#        def __init__(self, net, weight=7.5e-3):
#            super().__init__()
#            self.net = net
#            self.regularizer = GuidedGradientRegularizer(net, weight=weight)
#
#        def training_step(self, batch, batch_idx):
#            images, labels = batch
#            logits, penalty = self.regularizer(images, labels)
#            loss = F.cross_entropy(logits, labels) + penalty
#            self.log_dict({"penalty": penalty, "cos": self.regularizer.last_cosine})
#            return loss
#
#        def configure_optimizers(self):
#            return torch.optim.AdamW(self.parameters(), lr=5e-3)
#
# Lightning is not a dependency of this package, so here the same ``training_step``
# (without ``self.log_dict``) runs in the loop Lightning would run for us: a few steps
# on the regularized model, the penalty going into ``backward`` with the loss.
import torch.nn.functional as F
from torch import nn


class GuidedAlignedClassifier(nn.Module):
    def __init__(self, net: nn.Module, weight: float = 7.5e-3) -> None:
        super().__init__()
        self.net = net
        self.regularizer = GuidedGradientRegularizer(net, weight=weight)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits, penalty = self.regularizer(images, labels)
        return F.cross_entropy(logits, labels) + penalty

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-3)


module = GuidedAlignedClassifier(copy.deepcopy(regularized).train(), weight=0.04)
optimizer = module.configure_optimizers()
loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
for batch_idx, batch in zip(range(3), loader):
    optimizer.zero_grad()
    loss = module.training_step(batch, batch_idx)
    loss.backward()
    optimizer.step()
    print(f"step {batch_idx}: loss {loss.item():.3f}, "
          f"cos(plain, guided) {module.regularizer.last_cosine:.3f}")

# %%
# Before and after
# ----------------
shown = slice(0, 4)
maps = {
    "baseline |grad|": Saliency(baseline).attribute(images[shown], target=labels[shown]),
    "guided (baseline)": GuidedBackprop(baseline).attribute(images[shown], target=labels[shown]),
    "regularized |grad|": Saliency(regularized).attribute(images[shown], target=labels[shown]),
}
fig, axes = plot_attributions(images[shown], maps, mask=masks[shown], signed=False)
fig.suptitle("plain gradients before and after guided-gradient training")
plt.show()
