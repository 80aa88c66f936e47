"""The penalty form of norm-regularized adversarial training (double back-propagation)."""

from __future__ import annotations

import torch
from torch import nn

from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.input_gradients import (
    check_training_batch,
    cross_entropy_per_example,
    input_gradient,
)
from captum_regularized._internal.model_state import batchnorm_statistics_restored_on_error
from captum_regularized._internal.structured_norms import NormSpec, check_mask, conjugate_penalty

__all__ = ["GradientNormPenalty"]


class GradientNormPenalty:
    r"""Penalty ``R*(grad_x l)`` on each example's simple-gradient map.

    The first-order form of
    :class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss`
    (Gong, Dou & Farnia, 2024): instead of training on adversarial examples, add the
    Fenchel conjugate of the adversary's cost evaluated at the loss gradient,

    ``penalty = mean_i R*(g_i)``,  ``g_i = grad_{x_i} CE(f(x_i), y_i)``,

    with ``R*(g) = eps ||g||_1`` (``"l1"``), ``eps ||g||_1 + eps2 ||g||_2^2``
    (``"elastic_net"``), ``eps sum_G ||g_G||_2`` over ``group_size x group_size``
    patches per channel (``"group"``; smaller edge patches hold the remainder when
    ``group_size`` does not divide the image side) or
    ``eps sum_j (1 - 2 M_j) g_j^2 / ||g||_2`` (``"gaze"``, needs a mask ``M``).
    ``g_i`` is not divided by the batch size. The gradient is kept in the graph
    (``create_graph=True``), so ``penalty.backward()`` trains the parameters through it.

    One forward pass serves both terms: the call returns the logits of that pass and the
    penalty, the form that
    :func:`~captum_regularized.models.train_classifier` adds to the cross-entropy. The
    model's mode, flags and BatchNorm statistics are handled exactly as in a plain
    training step (one forward pass); no hook is added, inputs are not modified. The
    caller's autograd graph is kept: with ``pen(pre(images), labels)`` the logits and the
    penalty back-propagate into a trainable ``pre`` as through the composed model.
    Non-finite inputs and bad labels are refused, the BatchNorm statistics left as found.

    Parameters
    ----------
    model : nn.Module
        The classifier being trained (may be ``DistributedDataParallel``-wrapped).
    norm : {"l1", "elastic_net", "group", "gaze"}
        The structure to encourage.
    epsilon : float
        Weight ``eps`` (``eps1`` of the elastic net), finite and ``>= 0``.
    epsilon2 : float
        The elastic net's ``eps2 > 0`` (finite); must be 0 for the other norms.
    group_size : int
        Patch side for ``"group"``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4)
    >>> pen = GradientNormPenalty(model, norm="group", epsilon=0.1, group_size=4)
    >>> logits, penalty = pen(torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
    >>> logits.shape, penalty.shape, penalty.requires_grad
    (torch.Size([2, 3]), torch.Size([]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "l1",
        epsilon: float = 0.01,
        epsilon2: float = 0.0,
        group_size: int = 14,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.spec = NormSpec(norm, epsilon, epsilon2, group_size)
        self.model = model

    @property
    def norm(self) -> str:
        """The chosen norm."""
        return self.spec.norm

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)``: the model output and the batch mean of ``R*(g_i)``.

        Parameters
        ----------
        inputs : Tensor
            Batch ``(B, ...)``, finite; ``(B, C, H, W)`` for ``"group"``.
        labels : Tensor
            Class indices ``(B,)`` in ``[0, C - 1]`` (``-100``, cross-entropy's
            ``ignore_index``, is refused: drop those examples instead).
        mask : Tensor, optional
            Required for ``"gaze"`` (values in ``[0, 1]``), rejected otherwise.

        Returns
        -------
        tuple of Tensor
            The logits ``(B, C)`` and the penalty (0-d), both with their graph down to
            the caller's.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``; for a model that modifies its input in
            place.
        TypeError
            Non-floating ``inputs``; labels that are not an integer tensor.
        ValueError
            NaN or infinite ``inputs`` (before any forward pass); labels not ``(B,)`` or
            out of range; logits not ``(B, C)``; a bad ``mask``.
        """
        check_autograd_available(type(self).__name__)
        check_training_batch(inputs, labels, class_indices=True)
        mask = check_mask(self.spec, mask, inputs)
        with batchnorm_statistics_restored_on_error(self.model):
            out = input_gradient(
                self.model, inputs, labels, cross_entropy_per_example, create_graph=True
            )
        return out.logits, conjugate_penalty(self.spec, out.gradient, mask).mean()
