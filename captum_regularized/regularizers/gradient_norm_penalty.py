"""The penalty form of norm-regularized adversarial training (Gong, Dou & Farnia, 2024)."""

from __future__ import annotations

import torch
from torch import nn

from captum_regularized._internal.input_gradients import cross_entropy_per_example, input_gradient
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import unwrap_parallel
from captum_regularized.regularizers._finite_difference import (
    finite_difference_penalty,
    finite_difference_step,
    gradient_pass,
    penalty_and_direction,
    perturbed_pass,
    without_penalty_gradient,
)
from captum_regularized.regularizers._penalty_modes import (
    GradientScaler,
    InputGradientPenalty,
    double_backward_pass,
)
from captum_regularized.regularizers.adversarial_norms import adversarial_norm
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

__all__ = ["GradientNormPenalty"]


class GradientNormPenalty(InputGradientPenalty):
    r"""Penalty ``R*(grad_x l)`` on each example's simple-gradient map.

    The first-order form of
    :class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss`: instead of
    training on adversarial examples, add the Fenchel conjugate of the adversary's cost
    evaluated at the loss gradient,

    ``penalty = mean_i R*(g_i)``,  ``g_i = grad_{x_i} CE(f(x_i), y_i)``,

    with ``R*(g) = eps ||g||_1`` (``"l1"``), ``eps ||g||_1 + eps2 ||g||_2^2``
    (``"elastic_net"``), ``eps sum_G ||g_G||_2`` over ``group_size x group_size``
    patches per channel (``"group"``) or ``eps sum_j (1 - 2 M_j) g_j^2 / ||g||_2``
    (``"gaze"``, with a mask ``M``). ``g_i`` is the gradient of the *sum* of the
    per-example losses. ``pen(inputs, labels)`` returns the logits and the penalty, the
    form :func:`~captum_regularized.models.train_classifier` adds to the cross-entropy.
    ``mode="auto"`` trains through the penalty by double backpropagation where the
    model allows it and by a finite difference of first-order gradients where it does
    not; the modes, mixed precision and how to choose ``epsilon`` are in
    :doc:`/design_notes/gradient_penalties`.

    Parameters
    ----------
    model : nn.Module
        The classifier being trained (``DistributedDataParallel`` allowed).
    norm : {"l1", "elastic_net", "group", "gaze"}
        The structure to encourage.
    epsilon : float
        Weight ``eps`` (``eps1`` of the elastic net), finite and ``>= 0``; the default
        suits inputs in ``[0, 1]`` at 32x32.
    epsilon2 : float
        The elastic net's ``eps2 > 0`` (finite); must be 0 for the other norms.
    group_size : int
        Patch side for ``"group"``.
    mode : {"auto", "double_backprop", "finite_difference"}
        How the penalty's weight gradient is computed.
    fd_step : float, optional
        The finite-difference mode's relative step in ``(0, 1)``; ``None``: the default.
    grad_scaler : torch.amp.GradScaler, optional
        The scaler of the training loss, under mixed precision with loss scaling.

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
        epsilon: float = 3e-3,
        epsilon2: float = 0.0,
        group_size: int = 14,
        *,
        mode: str = "auto",
        fd_step: float | None = None,
        grad_scaler: GradientScaler | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.spec = adversarial_norm(norm, epsilon, epsilon2, group_size)
        super().__init__(model, mode, fd_step, grad_scaler)

    @property
    def norm(self) -> str:
        """The chosen norm."""
        return self.spec.norm

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> RegularizerOutput:
        """The batch's :class:`RegularizerOutput`: the logits and the mean of ``R*(g_i)``.

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
        RegularizerOutput
            The logits ``(B, C)`` and the penalty (0-d), both with their graph down to
            the caller's; ``.loss`` is ``cross_entropy(logits, labels) + penalty``.

        Raises
        ------
        RuntimeError, TypeError, ValueError
            The errors of both penalties (listed in :mod:`captum_regularized.regularizers`);
            a ``ValueError`` for a missing, superfluous or bad ``mask``, too.
        """
        with self._training_call(inputs, labels) as scale:
            call = (inputs, labels, self.spec.check_mask(mask, inputs), scale)
            logits, penalty = self._in_resolved_mode(
                lambda: self._double_backprop(*call),
                lambda: self._finite_difference(*call),
                inputs.device,
            )
        return RegularizerOutput(logits, penalty, labels=labels)

    def _double_backprop(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
        scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with double_backward_pass(type(self).__name__):
            out = input_gradient(self.model, inputs, labels, _loss_fn(scale), create_graph=True)
        self._check_double_backward_once(out.logits, out.gradient)
        gradient = out.gradient if scale is None else out.gradient / scale
        return out.logits, self.spec.conjugate_penalty(gradient, mask).mean()

    def _finite_difference(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
        scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        extra = unwrap_parallel(model)  # the extra passes do not synchronise
        with gradient_pass(model, inputs.device):
            first = input_gradient(extra, inputs, labels, _loss_fn(scale))
        gradient = first.gradient if scale is None else first.gradient / scale
        value, direction = penalty_and_direction(
            lambda leaf: self.spec.conjugate_penalty(leaf, mask).mean(), gradient
        )
        if self.spec.epsilon == 0 and self.spec.epsilon2 == 0:  # no penalty, no gradient
            logits, losses = _callers_pass(model, inputs, labels)
            return logits, without_penalty_gradient(value, losses.sum())

        step = finite_difference_step(inputs, direction, self.fd_step)

        def loss_at(x: torch.Tensor) -> torch.Tensor:
            return cross_entropy_per_example(logits_of(extra(x), "model"), labels).sum()

        perturbed = perturbed_pass(model, loss_at, inputs, direction, step, scale=scale)
        logits, losses = _callers_pass(model, inputs, labels)
        reference = None if perturbed.differences else losses.sum()  # L(x) subtracted already
        return logits, finite_difference_penalty(value, reference, perturbed, inputs)


def _loss_fn(scale: torch.Tensor | None):  # type: ignore[no-untyped-def]
    """The per-example cross-entropy, times the loss scale when there is one."""
    if scale is None:
        return cross_entropy_per_example

    def scaled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy_per_example(logits, labels).to(torch.float32) * scale

    return scaled


def _callers_pass(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and per-example losses of the caller's pass (its graph kept)."""
    with torch.enable_grad():
        logits = logits_of(model(inputs), "model")
        losses = cross_entropy_per_example(logits, labels)
    return logits, losses
