"""Adapters to other evaluation tools.

* :mod:`captum_regularized.integrations.quantus`: ``explain_func`` so that Quantus
  metrics can score every attribution method of this package and of Captum. Quantus
  itself is optional (the ``eval`` extra) and is never imported by this package.
* :mod:`captum_regularized.integrations.lightning`: a Lightning callback that explains
  fixed validation images and logs their scores and figure, and a ``LightningModule``
  base whose ``training_step`` adds a regularizer's penalty to the cross-entropy.
  Needs the ``lightning`` extra; imported only when you import it.
"""

__all__: list[str] = []
