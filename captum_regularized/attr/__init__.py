"""Attribution methods called exactly like Captum's own.

Each class subclasses Captum's ``GradientAttribution`` (and ``LayerAttribution`` for
layer methods), so it composes with ``NoiseTunnel``, ``captum.metrics`` and
``captum.attr.visualization``. One method per module (``signed_saliency`` with its
engine ``class_gradients``, ``rsi_grad_cam``, ``guided_backprop``, ``guided_grad_cam``,
``grad_cam_plus_plus``, ``score_cam``); ``map_postprocessing`` and
``reshape_transforms`` prepare maps and layer outputs.
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

__all__ = [
    "ActiveSaliency",
    "GuidedBackprop",
    "GuidedGradCam",
    "InactiveSaliency",
    "LayerGradCamPlusPlus",
    "LayerRSIGradCam",
    "LayerScoreCam",
    "NegativeSaliency",
    "PositiveSaliency",
    "deit_tokens_to_map",
    "normalize_per_example",
    "reduce_channels",
    "signed_saliency_maps",
    "swin_tokens_to_map",
    "vit_tokens_to_map",
]
