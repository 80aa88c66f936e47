"""
RSI-Grad-CAM next to Grad-CAM
=============================

Grad-CAM weights a layer's channels by the gradient of the class score *at the
input*. When the score saturates (a confident softmax, a ReLU switched off) that local
gradient says little. RSI-Grad-CAM (Lucas et al., arXiv 2205.10900) integrates the
gradient along a path from a baseline to the input instead: with ``A_l`` and ``G_l``
the layer's activation and gradient at the path point ``x_l``, each unit gets the
Riemann-Stieltjes sum ``sum_l (G_{l-1} + G_l) / 2 * (A_l - A_{l-1})``. Like
integrated gradients, these contributions add up to the change of the score between
baseline and input (*completeness*).

:class:`~captum_regularized.attr.LayerRSIGradCam` is called like Captum's
:class:`~captum.attr.LayerGradCam`: ``LayerRSIGradCam(model, layer).attribute(...)``.
"""

# %%
# A small model on synthetic shapes
# ---------------------------------
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch.utils.data import TensorDataset

from captum_regularized.attr import LayerRSIGradCam
from captum_regularized.datasets import SyntheticShapes
from captum_regularized.metrics import deletion_curve, insertion_curve, pointing_game
from captum_regularized.models import SimpleCNN, train_classifier
from captum_regularized.visualization import plot_attributions, plot_curves

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
torch.manual_seed(0)
shapes = SyntheticShapes(num_samples=2000, image_size=32, num_classes=4, seed=0)
train_images, train_labels, _ = shapes.render(list(range(len(shapes))))
model = SimpleCNN(num_classes=4, width=8)
train_classifier(
    model, TensorDataset(train_images, train_labels), epochs=3, batch_size=64, lr=5e-3,
    progress=False,
)
model.eval()

held_out = SyntheticShapes(num_samples=32, image_size=32, num_classes=4, seed=1)
images, labels, masks = held_out.render(list(range(32)))

# %%
# Maps across layers
# ------------------
# Both methods explain one layer's activations; deeper layers are coarser but more
# class-specific. The maps come out at the layer's resolution (``(B, 1, h, w)``) and
# :func:`~captum_regularized.visualization.plot_attributions` upsamples them to the
# image. ``output_transform="softmax"`` explains the class probability, as the paper
# does; ``n_steps`` is the number of path intervals.
layers = {"block1": model.block1, "block2": model.block2, "block3": model.block3}
shown = slice(0, 3)
maps = {}
for name, layer in layers.items():
    maps[f"Grad-CAM {name}"] = LayerGradCam(model, layer).attribute(
        images[shown], target=labels[shown], relu_attributions=True
    )
    maps[f"RSI {name}"] = LayerRSIGradCam(model, layer).attribute(
        images[shown], target=labels[shown], n_steps=16, output_transform="softmax"
    )
fig, axes = plot_attributions(images[shown], maps, mask=masks[shown], signed=False)
fig.suptitle("Grad-CAM and RSI-Grad-CAM at three depths")

# %%
# Completeness
# ------------
# With ``return_convergence_delta=True`` the method also returns, per example, the
# gap ``sum RSI - (y_t(x) - y_t(x'))``. Everything in SimpleCNN after ``block3`` is
# linear in its activation (average pooling and a linear classifier), so for the
# logits the gradient at the layer is constant along the path and the trapezoid rule
# is exact at any ``n_steps``. The softmax probability, or an earlier layer followed
# by more ReLUs, make the integrand vary: there the gap shrinks as the path is sampled
# more finely.
rsi = LayerRSIGradCam(model, model.block3)
settings = {
    "block3, logits": (model.block3, None),
    "block3, softmax": (model.block3, "softmax"),
    "block1, logits": (model.block1, None),
}
for label, (layer, transform) in settings.items():
    gaps = []
    for n_steps in (2, 8, 32, 128):
        _, delta = LayerRSIGradCam(model, layer).attribute(
            images, target=labels, n_steps=n_steps, output_transform=transform,
            internal_batch_size=1024, return_convergence_delta=True,
        )
        gaps.append(f"{delta.abs().mean():.1e}")
    print(f"{label:16s} mean |delta| for n_steps 2, 8, 32, 128: {', '.join(gaps)}")

# %%
# Which map is more faithful?
# ---------------------------
# Deletion removes the most-attributed pixels first and tracks the class probability
# (lower area is better); insertion puts them back onto a blurred image (higher is
# better). The pointing game asks whether each map's maximum lies on the object.
# One small model says little; the :doc:`reproduction report <../reproduction/report>`
# compares the methods over several trained models and seeds.
size = images.shape[-2:]
cams = {
    "Grad-CAM": LayerAttribution.interpolate(
        LayerGradCam(model, model.block3).attribute(images, target=labels, relu_attributions=True),
        size, interpolate_mode="bilinear",
    ),
    "RSI-Grad-CAM": LayerAttribution.interpolate(
        rsi.attribute(images, target=labels, n_steps=16, output_transform="softmax"),
        size, interpolate_mode="bilinear",
    ),
}
for name, cam in cams.items():
    hits = pointing_game(cam, masks).float().mean()
    print(f"{name:13s} pointing game: {hits:.2f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
plot_curves(
    {
        name: deletion_curve(model, images, cam, target=labels, steps=16)
        for name, cam in cams.items()
    },
    ax=left, title="deletion (lower is better)", ylabel="class probability",
)
plot_curves(
    {
        name: insertion_curve(model, images, cam, target=labels, steps=16, substrate="blur")
        for name, cam in cams.items()
    },
    ax=right, title="insertion (higher is better)", ylabel="class probability",
)
plt.show()

# %%
# timm and Hugging Face ViTs
# --------------------------
# The same calls work on vision transformers from timm and Hugging Face. Two things
# differ from a CNN. The layer outputs tokens, not a ``(B, C, h, w)`` map, so a
# ``reshape_transform`` lays the patch tokens out on their grid:
# :func:`~captum_regularized.attr.vit_tokens_to_map` drops the class token (and, with
# ``prefix_tokens=model.num_prefix_tokens``, timm's register tokens);
# :func:`~captum_regularized.attr.deit_tokens_to_map` drops DeiT's class and
# distillation tokens; :func:`~captum_regularized.attr.swin_tokens_to_map` moves a Swin
# stage's channels first. And a Hugging Face model returns an ``ImageClassifierOutput``,
# not a tensor: every method and metric reads its ``.logits`` (a dict with key
# ``"logits"`` works too). ``target=`` also takes pytorch-grad-cam's target callables,
# e.g. ``ClassifierOutputTarget(k)``, or any function of the ``(B, classes)`` output
# returning one score per example; here a small one of the same behaviour.
#
# The two models below are tiny and randomly initialised (built offline with
# ``pretrained=False`` and from a ``ViTConfig``), so their maps show the mechanics,
# not what a trained ViT looks at. Pick a layer whose patch tokens still reach the
# class token: the first normalisation of the last block.
import functools

import timm
from transformers import ViTConfig, ViTForImageClassification

from captum_regularized.attr import vit_tokens_to_map

torch.manual_seed(0)
timm_vit = timm.create_model(
    "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
    embed_dim=32, num_heads=2, num_classes=4, reg_tokens=2,
).eval()
hf_vit = ViTForImageClassification(
    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8, num_labels=4)
).eval()
hf_layers = getattr(hf_vit.vit, "layers", None) or hf_vit.vit.encoder.layer  # transformers 5 / 4


class ClassScore:
    """Like pytorch-grad-cam's ``ClassifierOutputTarget``: the score of one class."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[self.category] if output.dim() == 1 else output[:, self.category]


vit_maps = {
    "timm ViT (2 register tokens)": LayerRSIGradCam(timm_vit, timm_vit.blocks[-1].norm1).attribute(
        images[shown], target=labels[shown], n_steps=8,
        reshape_transform=functools.partial(
            vit_tokens_to_map, prefix_tokens=timm_vit.num_prefix_tokens
        ),
    ),
    "Hugging Face ViT": LayerRSIGradCam(hf_vit, hf_layers[-1].layernorm_before).attribute(
        images[shown], target=[ClassScore(int(k)) for k in labels[shown]], n_steps=8,
        reshape_transform=vit_tokens_to_map,
    ),
}
print(type(hf_vit(images[:1])).__name__, {name: tuple(m.shape) for name, m in vit_maps.items()})
fig, axes = plot_attributions(images[shown], vit_maps, mask=masks[shown], signed=False)
fig.suptitle("RSI-Grad-CAM on two untrained ViTs (4 x 4 patch grid)")
plt.show()
