"""RSI-Grad-CAM (Lucas et al., arXiv 2205.10900): the method and its path engine.

* :mod:`~captum_regularized.attr.rsi_grad_cam.layer_rsi_grad_cam`: the class
  :class:`LayerRSIGradCam`, its docstring with the maths, the streamed and the
  adaptive (``n_steps="auto"``) path integrals.
* :mod:`~captum_regularized.attr.rsi_grad_cam.path_batching`: how the ``m + 1`` path
  points of a batch are split into passes of bounded size and how each pass's rows,
  targets and additional forward arguments are built.
"""

from captum_regularized.attr.rsi_grad_cam.layer_rsi_grad_cam import LayerRSIGradCam

__all__ = ["LayerRSIGradCam"]
