"""Attribution methods called exactly like Captum's own.

Each class subclasses Captum's ``GradientAttribution`` (and ``LayerAttribution`` for
layer methods) so it composes with ``NoiseTunnel``, ``captum.metrics`` and
``captum.attr.visualization``.

One method, one place: :mod:`~captum_regularized.attr.signed_saliency` (the four
signed maps, :func:`signed_saliency_maps` and the class-gradient engine),
:mod:`~captum_regularized.attr.rsi_grad_cam` (:class:`LayerRSIGradCam` and its path
batching), :mod:`~captum_regularized.attr.guided_backprop`,
:mod:`~captum_regularized.attr.guided_grad_cam`,
:mod:`~captum_regularized.attr.grad_cam_plus_plus` (:class:`LayerGradCamPlusPlus`) and
:mod:`~captum_regularized.attr.score_cam` (:class:`LayerScoreCam`).
:mod:`~captum_regularized.attr.map_postprocessing` and
:mod:`~captum_regularized.attr.reshape_transforms` prepare maps and layer outputs.
What several methods share (targets, input checks, Captum's forms, the model's state,
the guided rule, the layer tap) is in :mod:`captum_regularized._internal`.

Models from timm and Hugging Face work as they are: a model (or ``forward_func``) may
return a tensor, a Hugging Face ``ModelOutput`` (its ``.logits`` are used) or a dict
with key ``"logits"``; ``target=`` also takes pytorch-grad-cam's target callables
(``ClassifierOutputTarget(k)``, any ``score(output) -> (B,)``, or a list of them, one
per example); :func:`vit_tokens_to_map`, :func:`deit_tokens_to_map` and
:func:`swin_tokens_to_map` lay transformer tokens out as maps. Neither
``transformers``, ``timm`` nor ``pytorch_grad_cam`` is imported.
"""

from captum_regularized.attr.grad_cam_plus_plus import LayerGradCamPlusPlus
from captum_regularized.attr.guided_backprop import GuidedBackprop
from captum_regularized.attr.guided_grad_cam import GuidedGradCam
from captum_regularized.attr.map_postprocessing import normalize_per_example, reduce_channels
from captum_regularized.attr.reshape_transforms import (
    deit_tokens_to_map,
    swin_tokens_to_map,
    vit_tokens_to_map,
)
from captum_regularized.attr.rsi_grad_cam import LayerRSIGradCam
from captum_regularized.attr.score_cam import LayerScoreCam
from captum_regularized.attr.signed_saliency import (
    ActiveSaliency,
    InactiveSaliency,
    NegativeSaliency,
    PositiveSaliency,
    signed_saliency_maps,
)

__all__: list[str] = []
__all__ += [
    "ActiveSaliency",
    "InactiveSaliency",
    "NegativeSaliency",
    "PositiveSaliency",
    "normalize_per_example",
    "reduce_channels",
    "signed_saliency_maps",
]
__all__ += ["LayerRSIGradCam", "deit_tokens_to_map", "swin_tokens_to_map", "vit_tokens_to_map"]
__all__ += ["GuidedBackprop", "GuidedGradCam"]
__all__ += ["LayerGradCamPlusPlus", "LayerScoreCam"]
