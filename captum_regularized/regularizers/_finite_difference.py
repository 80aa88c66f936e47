"""Training through a penalty ``R(g)`` on the input gradient with first derivatives only.

With ``g = grad_x L(x; theta)`` (``L`` a *sum* over the examples) and ``v = dR/dg``,
the weight gradient ``(dg/dtheta)^T v`` is the forward difference
``[grad_theta L(x + h v) - grad_theta L(x)] / h``: :func:`perturbed_pass` takes the first
term in a pass of its own, and :func:`finite_difference_penalty` returns the penalty
with that difference as its gradient, the second term coming from the caller's backward
pass. The maths, loss scaling and the step: :doc:`/design_notes/gradient_penalties`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from captum_regularized._internal.input_gradients import leaf_in_place_error_explained
from captum_regularized._internal.model_state import kept_batchnorm_statistics

__all__ = [
    "finite_difference_penalty", "finite_difference_step", "gradient_pass",
    "penalty_and_direction", "perturbed_pass", "without_penalty_gradient",
]


@contextlib.contextmanager
def _extra_pass(model: nn.Module, device: torch.device) -> Iterator[None]:
    """A pass beside the caller's: the same dropout masks, BatchNorm statistics kept.

    The random generators (CPU and ``device``) are forked and restored afterwards, so
    the step consumes random numbers as one plain forward pass does.
    """
    if device.type == "cpu":
        forked = torch.random.fork_rng(devices=[])
    else:
        index = device.index if device.index is not None else 0
        forked = torch.random.fork_rng(devices=[index], device_type=device.type)
    with forked, kept_batchnorm_statistics(model):
        yield


@contextlib.contextmanager
def gradient_pass(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The extra pass that takes ``g`` at ``x``; a model that modifies its input in place
    is named in a ``RuntimeError`` (its input gradient would be the modified tensor's)."""
    with _extra_pass(model, device), leaf_in_place_error_explained():
        yield


def penalty_and_direction(
    penalty: Callable[[torch.Tensor], torch.Tensor], gradient: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The penalty's value at ``gradient`` (detached) and its direction ``v = dR/dg`` there.

    ``penalty`` runs on a detached leaf, so no graph of the gradient pass is kept;
    ``v`` is zero where the value does not depend on the gradient.

    Examples
    --------
    >>> value, direction = penalty_and_direction(lambda g: g.square().sum(),
    ...                                          torch.tensor([1.0, -2.0]))
    >>> value.item(), direction.tolist(), value.requires_grad
    (5.0, [2.0, -4.0], False)
    """
    with torch.enable_grad():
        leaf = gradient.detach().requires_grad_(True)
        value = penalty(leaf)
        if value.requires_grad:
            (direction,) = torch.autograd.grad(
                value, leaf, allow_unused=True, materialize_grads=True
            )
        else:
            direction = torch.zeros_like(leaf)
    return value.detach(), direction


def without_penalty_gradient(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` carried by ``reference``'s graph with a zero gradient (a step without
    penalty, which runs no perturbed pass)."""
    return value.detach() + 0 * (reference - reference.detach())


def _default_relative_step(inputs: torch.Tensor) -> float:
    """``max(0.02, sqrt(eps))`` of the compute dtype (the autocast dtype when it is on)."""
    device_type = inputs.device.type
    dtype = inputs.dtype
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    return max(0.02, math.sqrt(torch.finfo(dtype).eps))


def finite_difference_step(
    inputs: torch.Tensor, direction: torch.Tensor, relative_step: float | None
) -> torch.Tensor:
    """The step ``h`` (0-d) of ``x + h v``: no example moves by more than ``tau ||x_i||``.

    ``h = tau / max_i(||v_i|| / s_i)`` with ``s_i = max(||x_i||, 1e-3 sqrt(D))`` for
    ``D`` values per example; ``tau`` is ``relative_step`` or the default (see
    :doc:`/design_notes/gradient_penalties`). ``h = 1`` where ``v = 0``.

    Examples
    --------
    >>> x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> finite_difference_step(x, v, 0.01)  # example 1 limits: ||h v_1|| = 0.01 ||x_1||
    tensor(0.0100)
    >>> finite_difference_step(x, torch.zeros(2, 2), 0.01)
    tensor(1.)
    """
    wide = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    x = inputs.detach().flatten(1).to(wide)
    v = direction.detach().flatten(1).to(wide)
    floor = 1e-3 * math.sqrt(max(x.shape[1], 1))
    scale = torch.linalg.vector_norm(x, dim=1).clamp_min(floor)
    largest = (torch.linalg.vector_norm(v, dim=1) / scale).max()
    tau = relative_step or _default_relative_step(inputs)
    return torch.where(largest > 0, tau / largest, torch.ones_like(largest))


class PerturbedGradients(NamedTuple):
    """First-order gradients at ``x + h v`` (or their differences with those at ``x``).

    ``parameters`` are those the loss reached; ``input_gradient`` is ``None`` unless the
    inputs carry the caller's graph; ``extra_gradients`` are those of ``extra_inputs``.
    ``differences`` is ``True`` when every gradient is ``grad L(x + h v) - grad L(x)``:
    the caller then passes no ``L(x)`` to :func:`finite_difference_penalty`.
    """

    step: torch.Tensor
    parameters: list[torch.Tensor]
    parameter_gradients: list[torch.Tensor]
    input_gradient: torch.Tensor | None
    extra_gradients: tuple[torch.Tensor, ...] = ()
    differences: bool = False


def _gradients_at(
    loss_at: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
    direction: torch.Tensor, step: torch.Tensor, parameters: Sequence[torch.Tensor],
    scale: torch.Tensor | None, extra_inputs: Sequence[torch.Tensor],
) -> PerturbedGradients:
    """``grad_theta L(x + h v)`` (and ``grad_x`` when ``inputs`` require grad), first order.

    The loss is multiplied by ``scale`` before the backward pass and the gradients
    divided by it after; ``step = 0`` gives the gradients at ``x``.
    """
    trainable = [p for p in parameters if p.requires_grad]
    keep_input = inputs.requires_grad
    moved = inputs.detach() + (step * direction.detach()).to(inputs.dtype)
    if keep_input:
        moved.requires_grad_(True)
    extra = list(extra_inputs)
    targets = [*trainable, *extra, *([moved] if keep_input else [])]
    with torch.enable_grad():
        loss = loss_at(moved)
        if scale is not None:
            loss = loss.to(torch.float32) * scale
        if not targets or not loss.requires_grad:
            zeros = tuple(torch.zeros_like(t) for t in extra)
            return PerturbedGradients(step, [], [], None, zeros)
        gradients = list(torch.autograd.grad(loss, targets, allow_unused=True))

    def unscaled(gradient: torch.Tensor) -> torch.Tensor:
        return gradient if scale is None else gradient.div_(scale.to(gradient.dtype))

    kept_parameters: list[torch.Tensor] = []
    kept_gradients: list[torch.Tensor] = []
    for parameter, gradient in zip(trainable, gradients[: len(trainable)]):
        if gradient is not None:
            kept_parameters.append(parameter)
            kept_gradients.append(unscaled(gradient))
    extra_gradients = tuple(
        torch.zeros_like(t) if g is None else unscaled(g)
        for t, g in zip(extra, gradients[len(trainable) : len(trainable) + len(extra)])
    )
    input_grad = gradients[-1] if keep_input else None
    if input_grad is not None:
        input_grad = unscaled(input_grad)
    return PerturbedGradients(step, kept_parameters, kept_gradients, input_grad, extra_gradients)


def _differences(
    perturbed: PerturbedGradients, reference: PerturbedGradients
) -> PerturbedGradients:
    """``perturbed`` minus ``reference`` (the same gradients at ``x``), in ``perturbed``'s
    tensors; a parameter reached in one pass only keeps its one gradient (negated at ``x``).
    """
    at_x = {id(p): g for p, g in zip(reference.parameters, reference.parameter_gradients)}
    parameters: list[torch.Tensor] = []
    gradients: list[torch.Tensor] = []
    for parameter, gradient in zip(perturbed.parameters, perturbed.parameter_gradients):
        there = at_x.pop(id(parameter), None)
        parameters.append(parameter)
        gradients.append(gradient if there is None else gradient.sub_(there))
    for parameter, gradient in zip(reference.parameters, reference.parameter_gradients):
        if id(parameter) in at_x:  # reached at x only
            parameters.append(parameter)
            gradients.append(gradient.neg_())
    at_h_input, at_x_input = perturbed.input_gradient, reference.input_gradient
    if at_x_input is not None:
        at_h_input = at_x_input.neg_() if at_h_input is None else at_h_input.sub_(at_x_input)
    return PerturbedGradients(
        perturbed.step,
        parameters,
        gradients,
        at_h_input,
        tuple(a.sub_(b) for a, b in zip(perturbed.extra_gradients, reference.extra_gradients)),
        differences=True,
    )


def perturbed_pass(
    model: nn.Module, loss_at: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
    direction: torch.Tensor, step: torch.Tensor, *, scale: torch.Tensor | None = None,
    extra_inputs: Sequence[torch.Tensor] = (), loss_is_difference: bool = False,
) -> PerturbedGradients:
    """The model's weight gradients at ``x + h v``, in an extra pass.

    With a loss scale, the passes back-propagate ``scale * L / B`` (the batch mean, as
    the training loss does) and, unless ``loss_at`` subtracts its value at ``x`` itself
    (``loss_is_difference``), a second pass at ``x`` turns the result into differences.
    """
    parameters = list(model.parameters())
    if scale is not None:
        scale = scale / inputs.shape[0]

    def gradients_at(h: torch.Tensor) -> PerturbedGradients:
        with _extra_pass(model, inputs.device):
            return _gradients_at(loss_at, inputs, direction, h, parameters, scale, extra_inputs)

    perturbed = gradients_at(step)
    if scale is None or loss_is_difference:
        return perturbed
    return _differences(perturbed, gradients_at(torch.zeros_like(step)))


class _ConstantGradients(torch.autograd.Function):
    """``0`` whose gradient with respect to ``tensors[i]`` is ``gradients[i]`` (times upstream).

    The backward pass scales the kept gradients *in place* and hands them to autograd
    (no second parameter-sized copy), so it can run once.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, count: int, dtype: torch.dtype, *tensors_and_gradients: torch.Tensor
    ) -> torch.Tensor:
        ctx.count = count
        ctx.used = False
        ctx.save_for_backward(*tensors_and_gradients[count:])
        return torch.zeros((), dtype=dtype, device=tensors_and_gradients[0].device)

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.used:
            raise RuntimeError(
                "the finite-difference penalty's weight gradient can be back-propagated "
                "once (it is handed to autograd in place); call the loss again for "
                "another backward pass"
            )
        ctx.used = True
        gradients = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep them intact
            scaled = [g * upstream.to(g.dtype) for g in gradients]
        else:
            scaled = [g.mul_(upstream.to(g.dtype)) for g in gradients]
        del gradients
        return (None, None, *scaled, *([None] * len(scaled)))


def finite_difference_penalty(
    value: torch.Tensor, reference_loss: torch.Tensor | None, perturbed: PerturbedGradients,
    inputs: torch.Tensor,
) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient is the forward difference.

    ``value.detach() + (T - T.detach())`` with
    ``T = (sum_p <p, grad_p L(x + h v)> + <x, grad_x L(x + h v)> - L(x)) / h``, the
    gradients at ``x + h v`` constants and ``L(x)`` (``reference_loss``) on the graph of
    the caller's logits; ``None`` when ``perturbed`` holds differences already.

    Examples
    --------
    >>> lin = nn.Linear(1, 1, bias=False)
    >>> _ = nn.init.constant_(lin.weight, 2.0)
    >>> x, v = torch.ones(1, 1), torch.ones(1, 1)
    >>> loss_at = lambda z: lin(z).square().sum()  # L = w^2 x^2, g = 2 w^2 x
    >>> out = perturbed_pass(lin, loss_at, x, v, torch.tensor(1e-3))
    >>> penalty = finite_difference_penalty(torch.tensor(4.0), loss_at(x), out, x)
    >>> penalty.item(), round(torch.autograd.grad(penalty, lin.weight)[0].item(), 2)
    (4.0, 8.0)
    """
    device_type = value.device.type
    wide = torch.float64 if value.dtype == torch.float64 else torch.float32
    with torch.enable_grad(), torch.autocast(device_type, enabled=False):
        total = torch.zeros((), device=value.device, dtype=wide)
        if reference_loss is not None:
            total = total - reference_loss.to(wide)
        if perturbed.parameters:
            total = total + _ConstantGradients.apply(
                len(perturbed.parameters), wide, *perturbed.parameters,
                *perturbed.parameter_gradients,
            )
        if perturbed.input_gradient is not None:
            total = total + torch.dot(
                inputs.reshape(-1), perturbed.input_gradient.reshape(-1)
            ).to(wide)
        term = total / perturbed.step.to(wide)
        surrogate = term - term.detach()
    return value.detach() + surrogate.to(value.dtype)
