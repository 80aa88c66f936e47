"""Adapters to other evaluation tools.

* :mod:`captum_regularized.integrations.quantus`: ``explain_func`` so that Quantus
  metrics can score every attribution method of this package and of Captum. Quantus
  itself is optional (the ``eval`` extra) and is never imported by this package.
"""

__all__: list[str] = []
