"""What every training loss of :mod:`captum_regularized.regularizers` returns."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["RegularizerOutput"]


class RegularizerOutput(tuple[torch.Tensor, torch.Tensor]):
    r"""The pair ``(logits, penalty)`` of one batch, with the training loss as ``.loss``.

    :class:`~captum_regularized.regularizers.GuidedGradientRegularizer`,
    :class:`~captum_regularized.regularizers.GradientNormPenalty` and
    :class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss` all return
    one, so a training loop reads them the same way:

    .. math::

        \text{loss} = \text{task loss}(\text{logits}, y) + \text{penalty}

    * ``logits`` -- the model's ``(B, classes)`` scores for the clean inputs, to log the
      training accuracy from. The two gradient penalties return them with their graph;
      the adversarial loss trains on ``x + delta`` and returns the (detached) logits of
      its inner solver's first pass at ``x``.
    * ``penalty`` -- the 0-d term the method adds to the task loss: the weighted
      guided-alignment distance, the dual-norm penalty ``R*(g)``, or for the adversarial
      loss its excess over the clean task loss (``R*(g)`` to first order).
    * ``loss`` -- the batch's 0-d training loss, to back-propagate. For the penalties it
      is ``cross_entropy(logits, labels) + penalty``, computed on first access; for the
      adversarial loss it is the mean loss on ``x + delta`` (mixed with the clean loss
      by ``clean_weight``), exactly as the method computed it.

    It unpacks as the pair: ``logits, penalty = regularizer(images, labels)``.

    Examples
    --------
    >>> from captum_regularized.regularizers import GradientNormPenalty
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> images, labels = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> out = GradientNormPenalty(model, epsilon=0.01)(images, labels)
    >>> logits, penalty = out
    >>> logits.shape, penalty.dim()
    (torch.Size([4, 3]), 0)
    >>> torch.equal(out.loss, F.cross_entropy(logits, labels) + penalty)
    True
    """

    _loss: torch.Tensor | None
    _labels: torch.Tensor | None

    def __new__(
        cls,
        logits: torch.Tensor,
        penalty: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        loss: torch.Tensor | None = None,
    ) -> RegularizerOutput:
        if (labels is None) == (loss is None):
            raise TypeError("RegularizerOutput needs exactly one of labels= and loss=")
        self = super().__new__(cls, (logits, penalty))
        self._labels = labels
        self._loss = loss
        return self

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kept = {"labels": self._labels} if self._loss is None else {"loss": self._loss}
        return (self[0], self[1]), kept

    @property
    def logits(self) -> torch.Tensor:
        """The model's ``(B, classes)`` scores for the clean inputs."""
        return self[0]

    @property
    def penalty(self) -> torch.Tensor:
        """The 0-d term added to the task loss."""
        return self[1]

    @property
    def loss(self) -> torch.Tensor:
        """The batch's 0-d training loss: the task loss of ``logits`` plus ``penalty``."""
        if self._loss is None:
            assert self._labels is not None  # one of the two is set in __new__
            self._loss = F.cross_entropy(self[0], self._labels) + self[1]
        return self._loss

    def __repr__(self) -> str:
        return f"RegularizerOutput(logits={self[0]!r}, penalty={self[1]!r})"
