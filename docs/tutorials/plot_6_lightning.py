"""
Explanations in a Lightning training run
========================================

Lightning runs validation without autograd (``torch.no_grad()`` inside ``fit``,
``torch.inference_mode()`` in ``Trainer.validate``), so a saliency method called from a
validation hook fails. :mod:`captum_regularized.integrations.lightning` has the pieces
that make explanations part of a run:

* :class:`~captum_regularized.integrations.lightning.RegularizedClassifier` (on
  :class:`~captum_regularized.integrations.lightning.RegularizedTrainingStep`): a
  ``LightningModule`` whose ``training_step`` is ``cross_entropy + penalty`` for one of
  this package's regularizers, with the penalty logged;
* :class:`~captum_regularized.integrations.lightning.ExplanationCallback`: at the end of
  validation epochs it explains a fixed set of validation images (under
  ``torch.inference_mode(False)`` and ``torch.enable_grad()``, the model left as
  found), logs the metrics of the maps with ``self.log`` and, on a TensorBoard logger,
  the figure;
* :mod:`captum_regularized.metrics.torchmetrics`: every metric as a
  ``torchmetrics.Metric``, to accumulate over a whole validation set, DDP included.

All of it needs the ``lightning`` extra: ``pip install "captum-regularized[lightning]"``.
"""

# %%
# A regularized module and the callback
# -------------------------------------
# The synthetic shapes come as ``(image, label, mask)``, the layout both pieces read.
# The module trains with the guided-gradient penalty of tutorial 3; the callback
# explains eight validation images after every epoch with Captum's ``Saliency``, our
# ``PositiveSaliency`` and Grad-CAM on ``net.block3`` (a layer method: ``layer=``).
import csv
import tempfile
import warnings

import lightning as L
import matplotlib.pyplot as plt
import torch
from captum.attr import Saliency
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized.attr import PositiveSaliency
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.integrations.lightning import (
    ExplanationCallback,
    RegularizedClassifier,
    split_batch,
)
from captum_regularized.metrics import deletion_auc, evaluate_dataset
from captum_regularized.metrics.torchmetrics import DeletionAUC, PointingGame
from captum_regularized.models import SimpleCNN
from captum_regularized.regularizers import GuidedGradientRegularizer
from captum_regularized.visualization import plot_attributions

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*number of training batches.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
torch.manual_seed(0)
root = tempfile.mkdtemp()  # where the run's logs go


def shapes_set(num_samples: int, seed: int) -> TensorDataset:
    shapes = SyntheticShapes(num_samples=num_samples, image_size=32, num_classes=4, seed=seed)
    return TensorDataset(*shapes.render(list(range(num_samples))))


train = DataLoader(shapes_set(1024, seed=0), batch_size=64, shuffle=True)
val = DataLoader(shapes_set(128, seed=1), batch_size=64)

module = RegularizedClassifier(
    SimpleCNN(num_classes=4, width=8),
    GuidedGradientRegularizer,
    regularizer_kwargs={"weight": 0.1, "distance": "cosine"},
    lr=5e-3,
)


def quick_deletion(batch):
    """Deletion AUC with 16 steps: a custom metric gets a MetricBatch."""
    return deletion_auc(batch.model, batch.inputs, batch.attributions, batch.targets, steps=16)


explanations = ExplanationCallback(
    {"Saliency": Saliency, "PositiveSaliency": PositiveSaliency, "Grad-CAM": "LayerGradCam"},
    layer="net.block3",
    num_images=8,
    metrics={"deletion_auc": quick_deletion, "pointing_game": "pointing_game",
             "gini": "gini_sparseness"},
)
trainer = L.Trainer(
    accelerator="cpu", devices=1, max_epochs=3, callbacks=[explanations],
    logger=CSVLogger(root, name="tutorial6"), default_root_dir=root, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=4,
)
trainer.fit(module, train, val)

# %%
# What was logged
# ---------------
# Training logged the loss and its parts (``train/penalty``, ``train/cosine``: the
# cosine of the plain and guided gradients the penalty pulls up); the callback logged
# one value per method and metric after every epoch.
with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
    rows = list(csv.DictReader(file))
for row in rows:
    if row.get("train/cosine"):
        last_training_row = row
print(f"last step: loss {float(last_training_row['train/loss']):.3f}, "
      f"penalty {float(last_training_row['train/penalty']):.4f}, "
      f"cos(plain, guided) {float(last_training_row['train/cosine']):.3f}")
for row in rows:
    if row.get("explanations/Saliency/deletion_auc"):
        scores = {k.split("/", 1)[1]: float(v) for k, v in row.items()
                  if k.startswith("explanations/") and v}
        print(f"epoch {row['epoch']}: " + ", ".join(
            f"{name} {value:.3f}" for name, value in sorted(scores.items())
            if name.endswith(("deletion_auc", "pointing_game"))))

# %%
# The maps of the last epoch
# --------------------------
# The callback keeps the images and the last maps on the CPU. With a
# ``TensorBoardLogger`` this figure is logged as ``explanations`` after every
# explained epoch; here it is drawn from what the callback kept.
masks = val.dataset.tensors[2][: len(explanations.images)]
fig, axes = plot_attributions(explanations.images, explanations.last_maps, mask=masks)
fig.suptitle("validation images explained after the last epoch")
plt.show()

# %%
# Metric objects over a whole validation set
# ------------------------------------------
# The ``torchmetrics`` metrics keep a sum and a count, so ``compute()`` is the mean over
# every example seen -- over every process under DDP, through torchmetrics' own
# synchronisation. Here they run over the validation loader by hand and agree with
# :func:`~captum_regularized.metrics.evaluate_dataset`.
model = module.eval()
deletion = DeletionAUC(model, steps=16)
pointing = PointingGame()
saliency = Saliency(model)
for batch in val:
    images, labels, masks = split_batch(batch)
    maps = saliency.attribute(images, target=labels)
    deletion.update(images, maps, target=labels)
    pointing.update(maps, masks)
reference = evaluate_dataset(
    model, val, saliency, {"deletion_auc": quick_deletion, "pointing_game": "pointing_game"},
    target="label", progress=False,
)
print(f"DeletionAUC  {float(deletion.compute()):.4f}  "
      f"(evaluate_dataset {reference.means['deletion_auc']:.4f})")
print(f"PointingGame {float(pointing.compute()):.4f}  "
      f"(evaluate_dataset {reference.means['pointing_game']:.4f})")

# %%
# Inside a ``validation_step``
# ----------------------------
# To score every validation batch rather than a fixed few, keep the metric objects on
# the module (Lightning moves them to its device) and switch autograd back on around
# the attribution. ``self.log`` with a metric object calls ``compute()`` at the end of
# the epoch and resets it. Tensors that Lightning made under inference mode (the batch)
# must be cloned inside ``torch.inference_mode(False)`` before autograd may use them.


class ScoredClassifier(RegularizedClassifier):
    def __init__(self, net, **kwargs):
        super().__init__(net, **kwargs)
        self.pointing = PointingGame()

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)
        images, labels, masks = split_batch(batch)
        with torch.inference_mode(False), torch.enable_grad():
            # tensors made under inference mode cannot enter autograd: clone them here
            images, labels = images.clone().requires_grad_(), labels.clone()
            maps = Saliency(self).attribute(images, target=labels)
        self.pointing.update(maps, masks)
        self.log("val/pointing_game", self.pointing)
        return loss


scored = ScoredClassifier(module.net, lr=5e-3)  # the trained network, plain cross-entropy
results = L.Trainer(
    accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
    enable_model_summary=False, default_root_dir=root,
).validate(scored, val, verbose=False)
print(f"pointing game over the validation set: {results[0]['val/pointing_game']:.4f}")
