"""Guided-gradient alignment training (Torres Figueroa et al., arXiv 2404.15024).

The loss is ``CE(f(x), y) + weight * mean_i d(g_i, g_G,i)``: ``g`` the plain input
gradient of the target logit, trained through, and ``g_G`` the guided-backprop gradient
of the same logit, a detached target; the paper's best is ``d = 1 - cos``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from captum_regularized._internal.batch_args import rows_of_args
from captum_regularized._internal.captum_compat import format_additional_args
from captum_regularized._internal.guided_relu import (
    check_guided_rule,
    check_not_scripted,
    guided_and_plain_gradients,
)
from captum_regularized._internal.input_gradients import check_class_logits
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import kept_batchnorm_statistics, unwrap_parallel
from captum_regularized.regularizers._finite_difference import (
    finite_difference_step,
    gradient_pass,
    penalty_and_direction,
    without_penalty_gradient,
)
from captum_regularized.regularizers._guided_finite_difference import (
    FiniteDifferenceStep,
    RecordStatistics,
    held_statistics,
    independent_examples,
    logits_at,
    subset_beside_reference,
    within,
)
from captum_regularized.regularizers._penalty_modes import (
    GradientScaler,
    InputGradientPenalty,
    double_backward_pass,
    is_compiled,
)
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

__all__ = ["GuidedGradientRegularizer"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance(g, g_guided) -> (B,)`` per-example loss."""

def _unit_rows(gradient: torch.Tensor) -> torch.Tensor:
    """Per-example gradients flattened to rows of unit L2 norm (float32 or wider)."""
    flat = gradient.flatten(1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


_DISTANCES: dict[str, Distance] = {  # on per-example gradients scaled to unit norm
    "cosine": lambda g, g_guided: 1 - (_unit_rows(g) * _unit_rows(g_guided)).sum(1),
    "l1": lambda g, g_guided: (_unit_rows(g) - _unit_rows(g_guided)).abs().mean(1),
    "mse": lambda g, g_guided: (_unit_rows(g) - _unit_rows(g_guided)).square().mean(1),
}


def _check_per_example_loss(loss: Any, count: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.shape != (count,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"distance must return one loss per regularised example, shape ({count},); "
            f"got {got}"
        )


def _eager_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The model's forward pass without a top-level ``torch.compile`` (for the guided
    rule, which compiled graphs do not see); compiled submodules are refused."""
    module = unwrap_parallel(model)
    module = getattr(module, "_orig_mod", module)
    forward: Callable[..., torch.Tensor] = module
    if getattr(module, "_compiled_call_impl", None) is not None:  # module.compile()
        eager_call = module._call_impl

        def forward(*args: Any) -> torch.Tensor:
            return eager_call(*args)

    for name, submodule in module.named_modules():
        if name and is_compiled(submodule):
            raise TypeError(
                f"model.{name} is a torch.compile'd submodule; the guided rule cannot reach "
                "the activations inside a compiled graph. Compile the whole model instead "
                "(mode='finite_difference' runs its guided pass on the uncompiled model)"
            )
    return forward


class GuidedGradientRegularizer(InputGradientPenalty):
    r"""Penalise the misalignment of the plain input gradient with guided backprop.

    A training-loss hook: ``logits, penalty = reg(inputs, labels)``, and the training
    loss is ``cross_entropy(logits, labels) + penalty`` with

    ``penalty = weight * mean_i distance(g_i, g_G,i)``,

    ``g_i`` the input gradient of example ``i``'s target logit (trained through) and
    ``g_G,i`` the guided-backprop gradient of the same logit (a detached target). One
    forward pass serves the logits and both gradients; functional ReLUs get the guided
    rule too. ``mode="auto"`` trains through the penalty by double backpropagation
    where the model allows it, else by a finite difference of first-order gradients;
    modes, BatchNorm, mixed precision, choosing the weight:
    :doc:`/design_notes/gradient_penalties`.

    Parameters
    ----------
    model : nn.Module
        A classifier returning ``(B, C)`` logits (``DistributedDataParallel`` allowed).
    weight : float
        Multiplies the mean distance, finite and ``>= 0``; ``7.5e-3`` is the paper's.
    distance : {"cosine", "l1", "mse"} or callable
        ``1 - cos(g, g_G)``, or the mean absolute / squared difference of the gradients
        scaled to unit L2 norm; a callable maps ``(g, g_guided)`` to a ``(B,)`` loss.
    target : {"label", "predicted"}
        Regularise the gradient of the label's logit or of the predicted class's.
    fraction : float in (0, 1]
        Regularise a random subset of ``round(fraction * B)`` examples (at least one).
    mode : {"auto", "double_backprop", "finite_difference"}
        How the penalty's weight gradient is computed.
    fd_step : float, optional
        The finite-difference mode's relative step in ``(0, 1)``; ``None``: the default.
    grad_scaler : torch.amp.GradScaler, optional
        The scaler of the training loss, under mixed precision with loss scaling.
    rule : {"gated", "ungated"}
        The guided rule, as in :class:`~captum_regularized.attr.GuidedBackprop`.

    Attributes
    ----------
    resolved_mode : str or None
        The mode the calls run in; for ``mode="auto"``, ``None`` until the first call.
    last_cosine : Tensor or None
        Mean ``cos(g, g_G)`` over the regularised examples of the last call (detached).

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4)
    >>> reg = GuidedGradientRegularizer(model, weight=7.5e-3)
    >>> images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    >>> logits, penalty = reg(images, labels)
    >>> loss = F.cross_entropy(logits, labels) + penalty
    >>> loss.backward()
    >>> logits.shape, penalty.dim(), bool(-1 <= reg.last_cosine <= 1)
    (torch.Size([4, 3]), 0, True)
    """

    def __init__(
        self,
        model: nn.Module,
        weight: float = 7.5e-3,
        distance: str | Distance = "cosine",
        target: str = "label",
        fraction: float = 1.0,
        *,
        mode: str = "auto",
        fd_step: float | None = None,
        grad_scaler: GradientScaler | None = None,
        rule: str = "gated",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.rule = check_guided_rule(rule)
        check_not_scripted(model)  # the guided rule cannot see inside TorchScript modules
        super().__init__(model, mode, fd_step, grad_scaler)
        if self.resolved_mode == "finite_difference":
            _eager_forward(model)  # refuses compiled submodules
        if isinstance(weight, bool) or not isinstance(weight, (int, float, numbers.Real)):
            raise TypeError(f"weight must be a number, got {type(weight).__name__}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if isinstance(distance, str):
            if distance not in _DISTANCES:
                raise ValueError(
                    f"distance must be one of {sorted(_DISTANCES)} or a callable, got {distance!r}"
                )
            self._distance = _DISTANCES[distance]
        elif callable(distance):
            self._distance = distance
        else:
            raise TypeError(
                f"distance must be a string or a callable, got {type(distance).__name__}"
            )
        if target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
        number = isinstance(fraction, (int, float, numbers.Real)) and not isinstance(fraction, bool)
        if not number or not 0 < fraction <= 1:  # NaN fails the comparison too
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.weight = float(weight)
        self.distance = distance
        self.target = target
        self.fraction = float(fraction)
        self.last_cosine: torch.Tensor | None = None

    def __repr__(self) -> str:
        distance = self.distance if isinstance(self.distance, str) else "<callable>"
        mode = "" if self.mode == "auto" else f", mode={self.mode!r}"
        rule = "" if self.rule == "gated" else f", rule={self.rule!r}"
        return (
            f"{type(self).__name__}(weight={self.weight}, distance={distance!r}, "
            f"target={self.target!r}, fraction={self.fraction}{mode}{rule})"
        )

    def __call__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        additional_forward_args: Any = None,
    ) -> RegularizerOutput:
        """The batch's :class:`RegularizerOutput`: ``(logits, penalty)`` and ``.loss``.

        Parameters
        ----------
        inputs : Tensor
            Images ``(B, ...)``, floating point, on the model's device.
        labels : Tensor
            Integer class labels ``(B,)``.
        additional_forward_args : Any
            Passed to the model after ``inputs``; per-example tensors follow the subset
            when ``fraction < 1``.

        Returns
        -------
        RegularizerOutput
            The logits ``(B, C)`` and the weighted penalty (0-d), both with their graph
            down to the caller's; ``.loss`` is ``cross_entropy(logits, labels) + penalty``.

        Raises
        ------
        RuntimeError, TypeError, ValueError
            The errors of both penalties (listed in :mod:`captum_regularized.regularizers`);
            a ``ValueError`` also for a model without an activation the guided rule knows.
        """
        with self._training_call(inputs, labels) as scale:
            batch = inputs.shape[0]
            count = max(1, min(batch, round(self.fraction * batch)))
            call = (inputs, labels, additional_forward_args, count, scale)
            logits, penalty = self._in_resolved_mode(
                lambda: self._double_backprop(*call),
                lambda: self._finite_difference(*call),
                inputs.device,
            )
        return RegularizerOutput(logits, penalty, labels=labels)

    def _double_backprop(
        self, inputs: torch.Tensor, labels: torch.Tensor, additional_forward_args: Any,
        count: int, scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` with ``g`` kept in the graph (``create_graph=True``)."""
        if count == inputs.shape[0]:
            with double_backward_pass(type(self).__name__):
                logits, plain, guided = guided_and_plain_gradients(
                    self.model,
                    inputs,
                    additional_forward_args=additional_forward_args,
                    create_graph=True,
                    per_example=True, rule=self.rule,
                    score_fn=lambda output: self._scores(output, labels, scale),
                )
        else:
            logits, plain, guided = self._subset_gradients(
                inputs, labels, additional_forward_args, count, scale
            )
        self._check_double_backward_once(logits, plain)
        if scale is not None:
            plain, guided = plain / scale, guided / scale
        per_example = self._distance(plain, guided)
        _check_per_example_loss(per_example, plain.shape[0])
        self.last_cosine = (
            (_unit_rows(plain.detach()) * _unit_rows(guided)).sum(1).mean().detach()
        )
        return logits, self.weight * per_example.mean()

    def _subset_gradients(
        self, inputs: torch.Tensor, labels: torch.Tensor, additional_forward_args: Any,
        count: int, scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = format_additional_args(additional_forward_args)
        logits = logits_of(self.model(inputs, *(args or ())), "model")
        check_class_logits(logits, labels)
        batch = inputs.shape[0]
        rows = torch.randperm(batch, device=inputs.device)[:count]
        chosen = labels if self.target == "label" else logits.detach().argmax(1)
        sub_args = rows_of_args(args, rows, batch)
        with kept_batchnorm_statistics(self.model), double_backward_pass(type(self).__name__):
            _, plain, guided = guided_and_plain_gradients(
                self.model,
                inputs[rows],
                additional_forward_args=sub_args,
                create_graph=True,
                per_example=True, rule=self.rule,
                score_fn=lambda output: _scaled(logits_at(output, chosen[rows]), scale),
            )
        return logits, plain, guided

    def _finite_difference(
        self, inputs: torch.Tensor, labels: torch.Tensor, additional_forward_args: Any,
        count: int, scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` with the penalty's weight gradient by a forward difference."""
        fd = self._guided_pass(inputs, labels, additional_forward_args, count, scale)
        if self.weight == 0:  # no penalty, no perturbed pass
            logits = fd.callers_pass()
            return logits, without_penalty_gradient(fd.value, fd.target_sum(logits, True))
        step = finite_difference_step(fd.sub_inputs, fd.direction, self.fd_step)
        if not fd.statistics:  # no train-mode BatchNorm: the examples are independent
            return independent_examples(fd, step)
        if fd.rows is None:
            return held_statistics(fd, step)
        return subset_beside_reference(fd, step)

    def _guided_pass(
        self, inputs: torch.Tensor, labels: torch.Tensor, additional_forward_args: Any,
        count: int, scale: torch.Tensor | None,
    ) -> FiniteDifferenceStep:
        """The first pass of a finite-difference step: ``g`` and ``g_G`` (first order, on
        the uncompiled model, BatchNorm statistics recorded), the penalty and ``v``."""
        eager = _eager_forward(self.model)
        args = tuple(format_additional_args(additional_forward_args) or ())
        batch = inputs.shape[0]
        rows = None if count == batch else torch.randperm(batch, device=inputs.device)[:count]
        sub_inputs = inputs if rows is None else inputs[rows]
        sub_labels = labels if rows is None else labels[rows]
        sub_args = args if rows is None else rows_of_args(args, rows, batch)
        record = RecordStatistics()
        with gradient_pass(self.model, inputs.device):
            sub_logits, plain, guided = guided_and_plain_gradients(
                within(record, eager), sub_inputs, additional_forward_args=sub_args,
                per_example=True, rule=self.rule,
                score_fn=lambda output: self._scores(output, sub_labels, scale),
            )
        if scale is not None:
            plain, guided = plain / scale, guided / scale

        def penalty(leaf: torch.Tensor) -> torch.Tensor:
            per_example = self._distance(leaf, guided)
            _check_per_example_loss(per_example, leaf.shape[0])
            return self.weight * per_example.mean()

        value, direction = penalty_and_direction(penalty, plain)
        self.last_cosine = (_unit_rows(plain) * _unit_rows(guided)).sum(1).mean().detach()
        classes = sub_labels if self.target == "label" else sub_logits.argmax(1)
        return FiniteDifferenceStep(
            self.model, eager, inputs, labels, args, rows, sub_inputs, sub_args, classes,
            record.statistics, value, direction, scale,
        )

    def _scores(
        self, logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_class_logits(logits, labels)
        classes = labels if self.target == "label" else logits.detach().argmax(1)
        return _scaled(logits_at(logits, classes), scale)


def _scaled(scores: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Scores times a loss scale, in float32 so half-precision logits cannot overflow."""
    return scores if scale is None else scores.to(torch.float32) * scale
