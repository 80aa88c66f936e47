"""
Training for readable gradients: GuidedGradientRegularizer
==========================================================

Guided backpropagation gives crisp maps but is not faithful to the model; the plain
input gradient is faithful but noisy. Torres Figueroa et al. (arXiv 2404.15024) close
the gap from the training side: add a penalty on the distance between the plain
gradient and the guided one, so the model learns to have gradients that look like
guided backprop.

:class:`~captum_regularized.regularizers.GuidedGradientRegularizer` is such a penalty,
a callable ``reg(images, labels)`` that returns the pair ``(logits, penalty)`` with the
training loss ``cross_entropy(logits, labels) + penalty`` as ``.loss`` (a
:class:`~captum_regularized.regularizers.RegularizerOutput`). It drops into an ordinary
PyTorch loop, where two lines change (see :doc:`../training_loop`;
:func:`~captum_regularized.models.train_classifier` with ``loss=reg`` is a ready-made
loop). This tutorial trains the same
small CNN twice in a plain loop -- same initial weights, same batches -- with and
without it, and compares the plain saliency maps. The last sections run the guided
rule and the penalty on MobileNet-V2 (ReLU6) and EfficientNet (SiLU), where Captum's
guided backprop misses the activations.
"""

# %%
# Two models from the same start
# ------------------------------
import copy
import tempfile
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, Saliency
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import energy_pointing_game, gradient_alignment
from captum_regularized.models import SimpleCNN, evaluate_accuracy
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


def train(model, regularizer=None, epochs=3):
    """An ordinary PyTorch loop; with a regularizer, the loss gains its penalty."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    loader = DataLoader(train_set, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # same batches
    model.train()
    for _epoch in range(epochs):
        for x, y in loader:
            # the regularizer runs one forward pass; its .loss = cross-entropy + penalty
            loss = F.cross_entropy(model(x), y) if regularizer is None else regularizer(x, y).loss
            optimizer.zero_grad()
            loss.backward()  # double backpropagation through the penalty
            optimizer.step()


train(baseline)
# The paper's weight (the default) is 7.5e-3 and costs no accuracy, but within a few
# seconds of training its effect is small; 0.1 shows it (the table in the class
# docstring measures both).
regularizer = GuidedGradientRegularizer(regularized, weight=0.1, distance="cosine")
train(regularized, regularizer)
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
# wherever a loss is computed. With Lightning (the ``lightning`` extra) there is no
# training step to write:
# :class:`~captum_regularized.integrations.lightning.RegularizedClassifier` wraps the
# network, builds the regularizer on it and its ``training_step`` returns
# ``cross_entropy + penalty``; Lightning runs ``backward`` (the double backpropagation
# happens there) and the optimizer step, and the parts are logged as
# ``train/cross_entropy``, ``train/penalty`` and ``train/cosine``. For a module of your
# own, derive from
# :class:`~captum_regularized.integrations.lightning.RegularizedTrainingStep` and set
# ``self.regularizer``:
#
# .. code-block:: python
#
#    from captum_regularized.integrations.lightning import RegularizedTrainingStep
#
#    class GuidedAlignedClassifier(RegularizedTrainingStep):
#        def __init__(self, net, weight=7.5e-3):
#            super().__init__()
#            self.net = net
#            self.regularizer = GuidedGradientRegularizer(net, weight=weight)
#
#        def forward(self, images):
#            return self.net(images)
#
#        def configure_optimizers(self):
#            return torch.optim.AdamW(self.parameters(), lr=5e-3)
#
# Here the ready module trains a copy of the regularized model for three steps in a
# real ``Trainer`` on the CPU. :doc:`plot_6_lightning` adds the callback that explains
# validation images during such a run.
import lightning as L

from captum_regularized.integrations.lightning import RegularizedClassifier

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
module = RegularizedClassifier(
    copy.deepcopy(regularized).train(), GuidedGradientRegularizer,
    regularizer_kwargs={"weight": 0.1}, lr=5e-3,
)
trainer = L.Trainer(
    accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
    default_root_dir=tempfile.mkdtemp(),
)
trainer.fit(module, torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True))
logged = trainer.logged_metrics
print(f"after {trainer.global_step} steps: loss {logged['train/loss']:.3f} = "
      f"cross-entropy {logged['train/cross_entropy']:.3f} + "
      f"penalty {logged['train/penalty']:.4f}; "
      f"cos(plain, guided) {logged['train/cosine']:.3f}")

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

# %%
# Beyond ReLU: MobileNet-V2 (ReLU6) and EfficientNet (SiLU)
# ---------------------------------------------------------
# The paper trains MobileNet-V2, whose activations are ``ReLU6``. Captum's
# ``GuidedBackprop`` overrides the backward pass of ``nn.ReLU`` modules only, so on
# MobileNet-V2 it returns the plain gradient without a word, and on EfficientNet it
# guides only the ``nn.ReLU`` inside the squeeze-excitation blocks and passes the
# ``SiLU`` activations through unchanged.
# :class:`captum_regularized.attr.GuidedBackprop` (equal to Captum's on models built
# from ``nn.ReLU``) applies the guided rule to every common activation
# ``y = f(z)``, modules and functional calls alike:
#
# .. math:: \text{grad}_\text{in} = f'(z)\,\mathbb{1}[z > 0]\,\max(\text{grad}_\text{out}, 0)
#
# which for ``ReLU`` is the classic rule. The penalty uses the same rule for its target.
# The maps are compared by the cosine of their directions: a fresh deep network's input
# gradients are tiny, so an absolute tolerance would call any two of them equal.
import time

import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop

from captum_regularized.attr import GuidedBackprop


def direction_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-example cosine, each map scaled to unit norm first."""
    a, b = (F.normalize(m.flatten(1).double(), dim=1) for m in (a, b))
    return (a * b).sum(1).mean().item()


few, few_labels = images[:4], labels[:4]
families = {
    "mobilenet_v2 (ReLU6)": torchvision.models.mobilenet_v2,
    "efficientnet_b0 (SiLU)": torchvision.models.efficientnet_b0,
}
for name, build in families.items():
    torch.manual_seed(0)
    net = build(num_classes=4).eval()
    plain = Saliency(net).attribute(few, target=few_labels, abs=False)
    captum_map = CaptumGuidedBackprop(net).attribute(few, target=few_labels)
    ours = GuidedBackprop(net).attribute(few, target=few_labels)
    print(
        f"{name}: cos(Captum's guided, plain) {direction_cosine(captum_map, plain):.3f}   "
        f"cos(ours, plain) {direction_cosine(ours, plain):.3f}"
    )

# %%
# A training step on each
# -----------------------
# ``mode="double_backprop"`` (the default) differentiates the penalty exactly;
# ``mode="finite_difference"`` needs first derivatives only, so it also runs where
# PyTorch has no double backward (compiled models, fused attention kernels, custom
# autograd functions). On CPU it is not faster; its gains are reach and memory. Here
# MobileNet-V2 takes an exact step and EfficientNet a finite-difference one, at the
# paper's weight (a few images, to keep the page quick to build).
for (name, build), mode in zip(families.items(), ("double_backprop", "finite_difference")):
    torch.manual_seed(0)
    net = build(num_classes=4).train()
    regularizer = GuidedGradientRegularizer(net, weight=7.5e-3, mode=mode)
    start = time.perf_counter()
    logits, penalty = regularizer(few, few_labels)
    (F.cross_entropy(logits, few_labels) + penalty).backward()
    seconds = time.perf_counter() - start
    print(
        f"{name:24s} {mode:18s} penalty {penalty.item():.2e}   "
        f"cos(plain, guided) {regularizer.last_cosine:.3f}   {seconds:.1f} s"
    )
