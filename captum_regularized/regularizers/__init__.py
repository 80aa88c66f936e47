"""captum_regularized.regularizers."""

from captum_regularized.regularizers.gradient_norm_penalty import GradientNormPenalty
from captum_regularized.regularizers.guided_gradient import GuidedGradientRegularizer
from captum_regularized.regularizers.norm_adversarial import NormRegularizedAdversarialLoss

__all__: list[str] = [
    "GradientNormPenalty",
    "GuidedGradientRegularizer",
    "NormRegularizedAdversarialLoss",
]
