"""Training-side losses that make a model's plain input gradient easier to read.

* :class:`GuidedGradientRegularizer`: pulls the input gradient towards the
  guided-backprop gradient (Torres Figueroa et al., arXiv 2404.15024).
* :class:`GradientNormPenalty`: a norm of the input gradient, the penalty form of
  norm-regularized adversarial training (Gong, Dou & Farnia, arXiv 2404.04647).
* :class:`NormRegularizedAdversarialLoss`: the adversarial form of the same training.

All three return a :class:`RegularizerOutput`: the pair ``(logits, penalty)`` -- the
model's logits for the clean batch and the term the method adds to the task loss --
with the batch's training loss ``cross_entropy(logits, labels) + penalty`` as
``.loss``, so one training loop (or ``train_classifier(loss=...)``) takes any of them.

The two penalties on the input gradient train through it by ``mode="double_backprop"``
(exact) or ``mode="finite_difference"`` (first derivatives only). The default,
``mode="auto"``, takes the exact mode where the model can be differentiated twice and
warns once when it falls back; ``.resolved_mode`` gives the choice. Details, BatchNorm
and mixed precision: :doc:`/design_notes/gradient_penalties`.

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
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

__all__: list[str] = [
    "GradientNormPenalty",
    "GuidedGradientRegularizer",
    "NormRegularizedAdversarialLoss",
    "RegularizerOutput",
]
