"""RSI-Grad-CAM (Lucas et al., arXiv 2205.10900): :class:`LayerRSIGradCam`
(``layer_rsi_grad_cam.py``), its path integral (``path_integral.py``) and the passes
along the path (``path_batching.py``). Notes: :doc:`/design_notes/rsi_grad_cam`.
"""

from captum_regularized.attr.rsi_grad_cam.layer_rsi_grad_cam import LayerRSIGradCam

__all__ = ["LayerRSIGradCam"]
