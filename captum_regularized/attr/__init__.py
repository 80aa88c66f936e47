"""Attribution methods called exactly like Captum's own.

Each class subclasses Captum's ``GradientAttribution`` (and ``LayerAttribution`` for
layer methods) so it composes with ``NoiseTunnel``, ``captum.metrics`` and
``captum.attr.visualization``.

One method, one place: :mod:`~captum_regularized.attr.signed_saliency` (the four
signed maps, :func:`signed_saliency_maps` and the class-gradient engine),
:mod:`~captum_regularized.attr.rsi_grad_cam` (:class:`LayerRSIGradCam` and its path
batching), :mod:`~captum_regularized.attr.guided_backprop` and
:mod:`~captum_regularized.attr.guided_grad_cam`. :mod:`~captum_regularized.attr.map_postprocessing`
and :mod:`~captum_regularized.attr.reshape_transforms` prepare maps and layer outputs.
What several methods share (targets, input checks, Captum's forms, the model's state,
the guided rule, the layer tap) is in :mod:`captum_regularized._internal`.
"""

from captum_regularized.attr.guided_backprop import GuidedBackprop
from captum_regularized.attr.guided_grad_cam import GuidedGradCam
from captum_regularized.attr.map_postprocessing import normalize_per_example, reduce_channels
from captum_regularized.attr.reshape_transforms import vit_tokens_to_map
from captum_regularized.attr.rsi_grad_cam import LayerRSIGradCam
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
__all__ += ["LayerRSIGradCam", "vit_tokens_to_map"]
__all__ += ["GuidedBackprop", "GuidedGradCam"]
