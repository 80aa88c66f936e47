"""captum-regularized: interpretable gradients for image classifiers, as a Captum plugin.

The package adds attribution methods that are called exactly like Captum's own
(:mod:`captum_regularized.attr`), training-side losses that make a model's plain
input gradient easier to read (:mod:`captum_regularized.regularizers`), metrics
(:mod:`captum_regularized.metrics`), a synthetic benchmark with ground-truth masks
(:mod:`captum_regularized.datasets`) and small reference models
(:mod:`captum_regularized.models`).

Examples
--------
>>> import captum_regularized
>>> isinstance(captum_regularized.__version__, str)
True
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
