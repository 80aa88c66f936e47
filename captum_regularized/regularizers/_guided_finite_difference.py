"""The guided penalty's finite-difference step, after its guided pass at ``x``.

The weight gradient of ``R(g)`` is the forward difference
``[grad_theta S(x + h v) - grad_theta S(x)] / h`` of the summed target logits ``S``
(:mod:`~captum_regularized.regularizers._finite_difference`); ``S(x)`` comes from the
caller's own pass. The penalty uses per-example gradients: train-mode BatchNorm
statistics held constant *in x*. So a step takes one of three strategies, each returning
``(logits, penalty)``:

* :func:`independent_examples`: no train-mode BatchNorm;
* :func:`held_statistics`: the pass at ``x + h v`` normalises with the statistics of
  ``x`` (:class:`RecordStatistics`, :class:`HoldStatistics`), whose dependence on the
  weights the caller's pass carries (:class:`AddStatisticsGradient`);
* :func:`subset_beside_reference`: a subset and its perturbed copy in one pass, both
  normalised with the subset's statistics (:class:`ReferenceHalfStatistics`).

Why, and what each costs: :doc:`/design_notes/gradient_penalties`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from captum_regularized._internal.batch_args import rows_of_args
from captum_regularized._internal.input_gradients import check_class_logits
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import unwrap_parallel
from captum_regularized._internal.per_example_batchnorm import (
    Moments,
    TrainBatchNormCalls,
    batch_moments,
    normalised,
)
from captum_regularized.regularizers._finite_difference import (
    finite_difference_penalty,
    perturbed_pass,
)

__all__ = [
    "FiniteDifferenceStep", "RecordStatistics", "held_statistics", "independent_examples",
    "logits_at", "subset_beside_reference", "within",
]


LogitsAndPenalty = tuple[torch.Tensor, torch.Tensor]
"""What each strategy returns, as the penalties' ``__call__`` does."""


def logits_at(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The logit of ``classes[i]`` for each example ``i``."""
    return logits.gather(1, classes.to(logits.device, torch.long)[:, None])[:, 0]


def within(
    mode: TorchFunctionMode, forward: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """``forward`` run inside the torch function mode ``mode``."""

    def run(*args: Any) -> torch.Tensor:
        with mode:
            return forward(*args)

    return run


@dataclasses.dataclass
class FiniteDifferenceStep:
    """One finite-difference step of the penalty after its guided pass at ``x``."""

    model: nn.Module
    eager: Callable[..., torch.Tensor]  # the model's uncompiled forward pass
    inputs: torch.Tensor
    labels: torch.Tensor
    args: tuple[Any, ...]
    rows: torch.Tensor | None  # the regularised subset; None: the whole batch
    sub_inputs: torch.Tensor
    sub_args: Any
    classes: torch.Tensor  # the target class of each regularised example
    statistics: list[Moments]  # of each train-mode BatchNorm call at x
    value: torch.Tensor  # the penalty (detached)
    direction: torch.Tensor  # v = d penalty / d g
    scale: torch.Tensor | None

    def target_sum(self, logits: torch.Tensor, whole_batch: bool = False) -> torch.Tensor:
        """``S``: the sum of the regularised examples' target logits."""
        if whole_batch and self.rows is not None:
            logits = logits[self.rows]
        return logits_at(logits, self.classes).sum()

    def callers_pass(self, mode: TorchFunctionMode | None = None) -> torch.Tensor:
        """The logits of the caller's pass at ``x`` (the model as given, maybe compiled)."""
        with torch.enable_grad(), mode or contextlib.nullcontext():
            logits = logits_of(self.model(self.inputs, *self.args), "model")
        check_class_logits(logits, self.labels)
        return logits


def independent_examples(fd: FiniteDifferenceStep, step: torch.Tensor) -> LogitsAndPenalty:
    """No train-mode BatchNorm: ``S(x + h v)`` of the subset; ``S(x)`` from the caller's pass."""
    forward = unwrap_parallel(fd.model)  # may be compiled
    perturbed = perturbed_pass(
        fd.model,
        lambda x: fd.target_sum(logits_of(forward(x, *fd.sub_args), "model")),
        fd.sub_inputs, fd.direction, step, scale=fd.scale,
    )
    logits = fd.callers_pass()
    # S(x), unless the perturbed pass subtracted its gradients already.
    reference = None if perturbed.differences else fd.target_sum(logits, True)
    return logits, finite_difference_penalty(fd.value, reference, perturbed, fd.sub_inputs)


_MISMATCH = (
    "the model ran a different number of train-mode BatchNorm layers in the passes of "
    "one finite-difference step (data-dependent control flow?); mode='finite_difference' "
    "needs the same layers in every pass over the same batch"
)


def _normalised(x: torch.Tensor, moments: Moments, call: dict[str, Any]) -> torch.Tensor:
    return normalised(x, moments, call["eps"], call["weight"], call["bias"])


class RecordStatistics(TrainBatchNormCalls):
    """Normalise as usual and keep each call's batch mean and variance (detached)."""

    def __init__(self) -> None:
        super().__init__()
        self.statistics: list[Moments] = []

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            self.statistics.append(batch_moments(call["input"]))
        return super().train_batch_norm(call)


class _OnePerCall(TrainBatchNormCalls):
    """Takes one of ``items`` per train-mode BatchNorm call, in order; a pass that makes
    another number of calls than there are items raises a ``RuntimeError``."""

    def __init__(self, items: Sequence[Any]) -> None:
        super().__init__()
        self.items = items
        self.calls = 0

    def _next(self) -> Any:
        self.calls += 1
        if self.calls > len(self.items):
            raise RuntimeError(_MISMATCH)
        return self.items[self.calls - 1]

    def check_all_used(self) -> None:
        """Refuse a pass that made fewer calls than there are items."""
        if self.calls != len(self.items):
            raise RuntimeError(_MISMATCH)


class HoldStatistics(_OnePerCall):
    """Normalise with ``held``, one ``(mean, var)`` per call (leaves, so the pass can be
    differentiated with respect to them)."""

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        return _normalised(call["input"], self._next(), call)


class _MomentsGradient(torch.autograd.Function):
    """``0`` whose gradient in a BatchNorm input ``a`` is that of ``<dm, mean(a)> + <dv, var(a)>``.

    The backward pass is one elementwise expression,
    ``dm / n + 2 dv (a - mean) / n`` per channel (``a`` is saved by BatchNorm anyway).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: torch.Tensor, d_mean: torch.Tensor, d_var: torch.Tensor,
        mean: torch.Tensor, dtype: torch.dtype,
    ) -> torch.Tensor:
        ctx.save_for_backward(a, d_mean, d_var, mean)
        return torch.zeros((), dtype=dtype, device=a.device)

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        a, d_mean, d_var, mean = ctx.saved_tensors
        shape = [1, a.shape[1]] + [1] * (a.dim() - 2)
        count = a.numel() // a.shape[1]
        up = upstream.to(d_mean.dtype) / count
        wide = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        grad = (wide - mean.view(shape)) * (2 * up * d_var).view(shape) + (up * d_mean).view(shape)
        return grad.to(a.dtype), None, None, None, None


class AddStatisticsGradient(_OnePerCall):
    """Normalise as usual; attach a zero whose gradient is ``<dm, mean> + <dv, var>``.

    ``moment_gradients`` are the perturbed pass's gradients ``(dm, dv)`` with respect to
    the held statistics and ``means`` the recorded means, one per call; the zeros are
    collected in ``attached`` (their sum joins the penalty).
    """

    def __init__(self, moment_gradients: list[Moments], means: list[torch.Tensor]) -> None:
        super().__init__(list(zip(moment_gradients, means)))
        self.attached: list[torch.Tensor] = []

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        (d_mean, d_var), mean = self._next()
        x = call["input"]
        self.attached.append(_MomentsGradient.apply(x, d_mean, d_var, mean, d_mean.dtype))
        return super().train_batch_norm(call)


class ReferenceHalfStatistics(TrainBatchNormCalls):
    """Normalise the whole batch with the statistics of its second half (on the graph)."""

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        x = call["input"]
        return _normalised(x, batch_moments(x[x.shape[0] // 2 :]), call)


def held_statistics(fd: FiniteDifferenceStep, step: torch.Tensor) -> LogitsAndPenalty:
    """Train-mode BatchNorm, whole batch: ``x + h v`` normalised with the statistics of ``x``.

    The held statistics are leaves; their gradients at ``x + h v`` reach the weights
    through the caller's pass, which attaches ``<d/d(stats) S(x + h v), stats(x; theta)>``.
    """
    held = [
        (mean.clone().requires_grad_(True), var.clone().requires_grad_(True))
        for mean, var in fd.statistics
    ]

    def held_loss(x: torch.Tensor) -> torch.Tensor:
        hold = HoldStatistics(held)
        with hold:
            total = fd.target_sum(logits_of(fd.eager(x, *fd.args), "model"))
        hold.check_all_used()
        return total

    perturbed = perturbed_pass(
        fd.model, held_loss, fd.inputs, fd.direction, step, scale=fd.scale,
        extra_inputs=[t for pair in held for t in pair],
    )
    extra = perturbed.extra_gradients
    attach = AddStatisticsGradient(
        [(extra[2 * i], extra[2 * i + 1]) for i in range(len(held))],
        [mean for mean, _ in fd.statistics],
    )
    logits = fd.callers_pass(attach)
    attach.check_all_used()
    # With differences (loss scaling), S(x) and its d/d(stats) were subtracted in the
    # perturbed pass: only <difference, stats(x; theta)> is left here.
    statistics_share = torch.stack(attach.attached).sum()
    reference = (
        -statistics_share if perturbed.differences
        else fd.target_sum(logits) - statistics_share
    )
    return logits, finite_difference_penalty(fd.value, reference, perturbed, fd.inputs)


def subset_beside_reference(fd: FiniteDifferenceStep, step: torch.Tensor) -> LogitsAndPenalty:
    """Train-mode BatchNorm, a subset: the caller's pass normalises the whole batch, so
    ``S(x_subset)`` runs beside ``x_subset + h v`` in one pass, both normalised with the
    statistics of the unperturbed half."""
    count = fd.sub_inputs.shape[0]
    pair = torch.cat([fd.sub_inputs, fd.sub_inputs])
    twice = torch.arange(count, device=fd.inputs.device).repeat(2)
    pair_args = rows_of_args(tuple(fd.sub_args or ()), twice, count)

    def difference(x: torch.Tensor) -> torch.Tensor:
        with ReferenceHalfStatistics():
            out = logits_at(logits_of(fd.eager(x, *pair_args), "model"), fd.classes.repeat(2))
        return out[:count].sum() - out[count:].sum()

    perturbed = perturbed_pass(
        fd.model, difference, pair, torch.cat([fd.direction, torch.zeros_like(fd.direction)]),
        step, scale=fd.scale, loss_is_difference=True,
    )
    if perturbed.input_gradient is not None:  # fold the halves: grad_x at x + h v minus at x
        halves = perturbed.input_gradient
        perturbed = perturbed._replace(input_gradient=halves[:count] + halves[count:])
    logits = fd.callers_pass()
    return logits, finite_difference_penalty(fd.value, None, perturbed, fd.sub_inputs)
