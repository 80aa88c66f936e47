"""Training-side losses that make a model's plain input gradient easier to read.

* :class:`GuidedGradientRegularizer`: pulls the input gradient towards the
  guided-backprop gradient (Torres Figueroa et al., arXiv 2404.15024).
* :class:`GradientNormPenalty`: a norm of the input gradient, the penalty form of
  norm-regularized adversarial training (Gong, Dou & Farnia, arXiv 2404.04647).
* :class:`NormRegularizedAdversarialLoss`: the adversarial form of the same training.

The two penalties on the input gradient take ``mode="double_backprop"`` (exact) or
``mode="finite_difference"`` (first derivatives only). The default, ``mode="auto"``,
runs the exact mode where the model can be differentiated twice and finite
differences where it cannot (MobileNet V3's ``hardsigmoid``, a custom
``@once_differentiable`` function, a ``torch.compile``'d model): the first call tries
the exact mode and, when the double-backward check finds an obstacle (before any
backward pass of the caller), undoes its side effects (BatchNorm statistics, random
state; no ``.grad`` is written), warns once with a ``UserWarning`` naming the
obstacle, and runs that call and the following ones with finite differences. A
compiled model is resolved at construction. ``.resolved_mode`` gives the choice
(``None`` before the first call); keeping the exact mode is logged at INFO level on
the ``captum_regularized.regularizers`` logger. The result is exactly that of the
chosen mode passed explicitly.

Both penalties refuse the same bad calls, before any forward pass where the inputs are
at fault:

* ``RuntimeError`` inside ``torch.inference_mode()``; for a model that modifies its
  input in place; in ``mode="double_backprop"``, for a model that cannot be
  differentiated twice (the message names ``mode="finite_difference"``);
* ``TypeError`` for non-floating ``inputs`` and labels that are not an integer tensor;
* ``ValueError`` for NaN or infinite ``inputs``, labels not ``(B,)`` or outside
  ``[0, C - 1]`` (``-100``, cross-entropy's ``ignore_index``, included) and logits not
  ``(B, C)``.

BatchNorm running statistics are left as found whenever a call raises.
"""

from captum_regularized.regularizers.gradient_norm_penalty import GradientNormPenalty
from captum_regularized.regularizers.guided_gradient import GuidedGradientRegularizer
from captum_regularized.regularizers.norm_adversarial import NormRegularizedAdversarialLoss

__all__: list[str] = [
    "GradientNormPenalty",
    "GuidedGradientRegularizer",
    "NormRegularizedAdversarialLoss",
]
