"""The two modes of the penalties on the input gradient, shared by their two classes.

:class:`~captum_regularized.regularizers.GuidedGradientRegularizer` and
:class:`~captum_regularized.regularizers.GradientNormPenalty` train the weights through
a penalty ``R(g)`` on the input gradient ``g`` in one of two ways (``mode=``), or
pick one of them on their first call (``mode="auto"``, the default, see
:meth:`InputGradientPenalty._in_resolved_mode`):

* ``"double_backprop"``: the gradient is taken with ``create_graph=True``; the
  model's own forward pass runs with PyTorch's math attention kernel
  (:func:`double_backward_attention`), and :func:`check_double_backward` names what in
  a model cannot be differentiated twice before the caller's backward pass fails on it.
* ``"finite_difference"``: only first derivatives. For a penalty ``R(g)`` on
  ``g = grad_x L(x; theta)`` (``L`` the *sum* of the per-example losses or scores) with
  ``v = dR/dg`` (taken from ``g`` and the fixed target, no graph),

  ``dR/dtheta = (dg/dtheta)^T v = grad_theta (v . grad_x L) = grad_theta d/dh L(x + h v)|_{h=0}``

  (the mixed partial derivatives commute), so the weight gradient is the forward
  difference ``[grad_theta L(x + h v) - grad_theta L(x)] / h``.
  :func:`perturbed_gradients` takes the first term in a separate first-order pass;
  :func:`finite_difference_penalty` returns a scalar whose *value* is the penalty and
  whose gradient is that difference, the second term coming from the caller's own
  backward pass through the logits' graph (:func:`finite_difference_step` picks ``h``).

  Under loss scaling (a ``GradScaler``) that second term would cross the caller's
  half-precision graph multiplied by ``scale / h``: its activation gradients would be
  ``1/h`` larger than in a plain step and overflow, and the scaler would settle ``h``
  times lower. So with a scaler :meth:`InputGradientPenalty._perturbed_pass` also
  takes ``grad_theta L(x)`` in a first-order pass of its own and subtracts it
  (:func:`gradient_differences`): ``1/h`` multiplies only that difference, in the
  parameters' precision, and no gradient in the caller's backward pass is ``1/h``
  larger than a plain step's. Both passes back-propagate the scaled batch *mean*, as
  the training loss does (the sum's weight gradients would be ``B`` times larger).

:class:`InputGradientPenalty`, the base of both classes, holds what they share around
the two modes: the settings (:func:`check_penalty_settings`), the checks every call
starts with, the one-time double-backward check and the perturbed pass. Both
finite-difference modes take ``g`` in a :func:`gradient_pass`, the penalty's value and
direction from :func:`penalty_and_direction`, and return
:func:`without_penalty_gradient` when there is no penalty to train through.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.guided_relu import check_not_compiled
from captum_regularized._internal.input_gradients import (
    check_training_batch,
    leaf_in_place_error_explained,
)
from captum_regularized._internal.model_state import (
    batchnorm_statistics_restored_on_error,
    kept_batchnorm_statistics,
    unwrap_parallel,
)

__all__ = [
    "AUTO",
    "DEFAULT_RELATIVE_STEP",
    "MODES",
    "DoubleBackwardUnavailable",
    "GradientScaler",
    "InputGradientPenalty",
    "PerturbedGradients",
    "check_double_backward",
    "check_mode",
    "check_penalty_settings",
    "compute_dtype",
    "default_relative_step",
    "double_backward_attention",
    "double_backward_errors_explained",
    "double_backward_obstacle",
    "extra_pass",
    "finite_difference_penalty",
    "finite_difference_step",
    "gradient_differences",
    "gradient_pass",
    "gradient_scale",
    "has_compiled_module",
    "penalty_and_direction",
    "penalty_direction",
    "perturbed_gradients",
    "rng_replayed",
    "without_penalty_gradient",
]

MODES = ("double_backprop", "finite_difference")
"""The two ways of training through the penalty: exact, or first derivatives only."""

AUTO = "auto"
"""The default ``mode=``: the first of :data:`MODES` the model allows, chosen on the first call."""

_LOG = logging.getLogger("captum_regularized.regularizers")
_T = TypeVar("_T")


def check_mode(mode: object, fd_step: object) -> float | None:
    """Validate ``mode`` and the relative finite-difference step; return the step.

    Examples
    --------
    >>> check_mode("finite_difference", 1e-3)
    0.001
    >>> check_mode("auto", None) is None
    True
    >>> check_mode("double_backprop", 1e-3)
    Traceback (most recent call last):
    ...
    ValueError: fd_step is only used by mode='finite_difference' (or 'auto' when it falls \
back to it); got fd_step=0.001 with mode='double_backprop'
    """
    if mode not in (AUTO, *MODES):
        raise ValueError(f"mode must be one of {(AUTO, *MODES)}, got {mode!r}")
    if fd_step is None:
        return None
    if mode == "double_backprop":
        raise ValueError(
            f"fd_step is only used by mode='finite_difference' (or 'auto' when it falls "
            f"back to it); got fd_step={fd_step!r} with mode={mode!r}"
        )
    if isinstance(fd_step, bool) or not isinstance(fd_step, (int, float)):
        raise TypeError(f"fd_step must be a float, got {type(fd_step).__name__}")
    if not math.isfinite(fd_step) or not 0 < fd_step < 1:
        raise ValueError(f"fd_step must be a relative step in (0, 1), got {fd_step!r}")
    return float(fd_step)


class GradientScaler(Protocol):
    """What the losses use of a ``torch.amp.GradScaler``: ``scale(tensor) -> tensor``."""

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        """Multiply ``outputs`` by the current loss scale."""
        ...


def gradient_scale(grad_scaler: GradientScaler | None, like: torch.Tensor) -> torch.Tensor | None:
    """The scaler's current factor as a 0-d float32 tensor on ``like``'s device, or ``None``.

    Read through ``grad_scaler.scale`` (a device multiplication, no host
    synchronisation). ``None`` without a scaler and for a disabled ``GradScaler``
    (``is_enabled()`` false), which scales nothing.

    Examples
    --------
    >>> gradient_scale(torch.amp.GradScaler("cpu", init_scale=8.0), torch.zeros(2))
    tensor(8.)
    >>> gradient_scale(None, torch.zeros(2)) is None
    True
    >>> gradient_scale(torch.amp.GradScaler("cpu", enabled=False), torch.zeros(2)) is None
    True
    """
    if grad_scaler is None:
        return None
    is_enabled = getattr(grad_scaler, "is_enabled", None)
    if callable(is_enabled) and not is_enabled():
        return None
    one = torch.ones((), device=like.device, dtype=torch.float32)
    return grad_scaler.scale(one).to(torch.float32)


@contextlib.contextmanager
def double_backward_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` with PyTorch's math kernel inside the block.

    The fused kernels (flash, memory-efficient, the CPU flash kernel) have no double
    backward; the math kernel is made of ordinary differentiable operations. Only
    attention calls are affected.

    Examples
    --------
    >>> q = torch.rand(1, 1, 3, 4, requires_grad=True)
    >>> with double_backward_attention():
    ...     out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    >>> (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    >>> g.sum().backward()  # differentiable twice
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


_ONCE_DIFFERENTIABLE_CODE = once_differentiable(lambda ctx: None).__code__
_FAILING_NODES = frozenset({"DelayedError", "NotImplemented", "Error"})


def double_backward_obstacle(*outputs: torch.Tensor) -> str | None:
    """Name what in the autograd graphs of ``outputs`` cannot be differentiated twice.

    Looks for the nodes autograd puts where a second derivative is missing (``Error``,
    ``NotImplemented``, ``DelayedError``, which raise only when the caller's backward
    pass reaches them) and for custom ``autograd.Function`` s whose ``backward`` is
    ``@once_differentiable`` (their first derivative is computed without a graph, so
    a second one is missing or wrong). ``None`` when there is none.

    Examples
    --------
    >>> x = torch.rand(3, requires_grad=True)
    >>> (g,) = torch.autograd.grad(x.tanh().sum(), x, create_graph=True)
    >>> double_backward_obstacle(g) is None
    True
    """
    seen: set[object] = set()
    stack: list[tuple[object, str]] = [
        (t.grad_fn, "") for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None
    ]
    failing: str | None = None
    while stack:
        node, parent = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        forward_cls = getattr(node, "_forward_cls", None)
        backward = getattr(forward_cls, "backward", None)
        if getattr(backward, "__code__", None) is _ONCE_DIFFERENTIABLE_CODE:
            return (  # the most precise answer: stop here
                f"the custom autograd Function {forward_cls.__name__} "  # type: ignore[union-attr]
                "(its backward is @once_differentiable)"
            )
        if name in _FAILING_NODES and failing is None:
            neighbours = sorted(
                {type(fn).__name__ for fn, _ in node.next_functions if fn is not None}  # type: ignore[attr-defined]
                | ({parent} if parent else set())
            )
            near = f" (next to {', '.join(neighbours)})" if neighbours else ""
            failing = f"an operation without a double backward (autograd node {name}{near})"
        stack.extend(
            (fn, name) for fn, _ in node.next_functions if fn is not None  # type: ignore[attr-defined]
        )
    return failing


class DoubleBackwardUnavailable(RuntimeError):
    """The model cannot be differentiated twice: ``mode="double_backprop"`` cannot run on it.

    A ``RuntimeError`` (what the exact mode raises) naming ``mode='finite_difference'``;
    ``mode="auto"`` catches it on its first call and switches to that mode. ``obstacle``
    names what in the model has no second derivative.
    """

    def __init__(self, message: str, obstacle: str) -> None:
        super().__init__(message)
        self.obstacle = obstacle


def _use_finite_differences(who: str, obstacle: str) -> DoubleBackwardUnavailable:
    return DoubleBackwardUnavailable(
        f"{who}(mode='double_backprop') differentiates the input gradient a second time, "
        f"but the model contains {obstacle}, which cannot be differentiated twice; use "
        "mode='finite_difference', which needs first derivatives only",
        obstacle,
    )


def check_double_backward(who: str, *outputs: torch.Tensor) -> None:
    """Raise a ``RuntimeError`` naming ``mode='finite_difference'`` when a double backward is
    missing (a :class:`DoubleBackwardUnavailable`).

    Called on a ``create_graph=True`` gradient, before the caller's backward pass would
    fail on it (or, after a ``@once_differentiable`` function, silently miss a term).

    Examples
    --------
    >>> class Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     @once_differentiable
    ...     def backward(ctx, grad):
    ...         return 2 * ctx.saved_tensors[0] * grad
    >>> x = torch.rand(2, requires_grad=True)
    >>> (g,) = torch.autograd.grad(Square.apply(x).sum(), x, create_graph=True)
    >>> check_double_backward("Penalty", Square.apply(x), g)
    Traceback (most recent call last):
    ...
    captum_regularized.regularizers._penalty_modes.DoubleBackwardUnavailable: \
Penalty(mode='double_backprop') differentiates the input gradient a second time, but the \
model contains the custom autograd Function Square (its backward is \
@once_differentiable), which cannot be differentiated twice; use \
mode='finite_difference', which needs first derivatives only
    """
    obstacle = double_backward_obstacle(*outputs)
    if obstacle is not None:
        raise _use_finite_differences(who, obstacle)


_DOUBLE_BACKWARD_ERRORS = re.compile(
    r"differentiate twice|once_differentiable|double backward|derivative for .* is not "
    r"implemented|does not currently support double backward",
    re.IGNORECASE,
)


@contextlib.contextmanager
def double_backward_errors_explained(who: str) -> Iterator[None]:
    """Re-raise autograd's "no second derivative" ``RuntimeError`` naming the other mode
    (as a :class:`DoubleBackwardUnavailable`).

    Examples
    --------
    >>> with double_backward_errors_explained("Penalty"):
    ...     raise RuntimeError("derivative for aten::foo_backward is not implemented")
    Traceback (most recent call last):
    ...
    captum_regularized.regularizers._penalty_modes.DoubleBackwardUnavailable: \
Penalty(mode='double_backprop') differentiates the input gradient a second time, but the \
model contains an operation without a double backward (derivative for \
aten::foo_backward is not implemented), which cannot be differentiated twice; use \
mode='finite_difference', which needs first derivatives only
    """
    try:
        yield
    except RuntimeError as error:
        if not _DOUBLE_BACKWARD_ERRORS.search(str(error)):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "?"
        obstacle = f"an operation without a double backward ({first_line})"
        raise _use_finite_differences(who, obstacle) from error


@contextlib.contextmanager
def rng_replayed(device: torch.device) -> Iterator[None]:
    """Run the block on a copy of the random state of ``device`` (and the CPU).

    Every forward pass of one finite-difference step must draw the same dropout masks,
    and the step must consume random numbers as one plain forward pass does: the extra
    passes run inside this block, which restores the generators' state afterwards.

    Examples
    --------
    >>> with rng_replayed(torch.device("cpu")):
    ...     a = torch.rand(1)
    >>> bool(torch.rand(1) == a)
    True
    """
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
        return
    index = device.index if device.index is not None else 0
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        yield


@contextlib.contextmanager
def extra_pass(model: nn.Module, device: torch.device) -> Iterator[None]:
    """An extra pass: same dropout masks as the caller's, BatchNorm statistics kept.

    Examples
    --------
    >>> net = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.5)).train()
    >>> x = torch.rand(4, 2)
    >>> with extra_pass(net, x.device):
    ...     first = net(x)
    >>> torch.equal(net(x), first), float(net[0].running_mean.abs().sum()) > 0
    (True, True)
    """
    with rng_replayed(device), kept_batchnorm_statistics(model):
        yield


@contextlib.contextmanager
def gradient_pass(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The first-order pass of a finite-difference step, which takes ``g`` at ``x``.

    An :func:`extra_pass` in which a model that modifies its input in place is named
    in a ``RuntimeError`` (its input gradient would be that of the modified tensor).

    Examples
    --------
    >>> net = nn.Sequential(nn.BatchNorm1d(2)).train()
    >>> with gradient_pass(net, torch.device("cpu")):
    ...     _ = net(torch.rand(4, 2))
    >>> float(net[0].running_mean.abs().sum())
    0.0
    """
    with extra_pass(model, device), leaf_in_place_error_explained():
        yield


def penalty_direction(value: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """``v = d value / d leaf``, the direction of ``x + h v`` (zeros where ``value`` is
    constant in ``leaf``).

    Examples
    --------
    >>> g = torch.tensor([1.0, -2.0], requires_grad=True)
    >>> penalty_direction(g.abs().sum(), g).tolist()
    [1.0, -1.0]
    """
    if not value.requires_grad:
        return torch.zeros_like(leaf)
    (direction,) = torch.autograd.grad(value, leaf, allow_unused=True, materialize_grads=True)
    return direction


def penalty_and_direction(
    penalty: Callable[[torch.Tensor], torch.Tensor], gradient: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The penalty's value at ``gradient`` (detached) and its direction ``v = dR/dg`` there.

    ``penalty`` is evaluated on a detached leaf holding ``gradient``, so no graph of the
    gradient pass is kept; see :func:`penalty_direction`.

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
        direction = penalty_direction(value, leaf)
    return value.detach(), direction


def without_penalty_gradient(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value``, carried by ``reference``'s graph with a zero gradient.

    What a step without penalty (weight 0) returns instead of running the perturbed
    pass: the penalty's value, and a gradient of exactly 0 through the caller's pass.

    Examples
    --------
    >>> w = torch.tensor(3.0, requires_grad=True)
    >>> out = without_penalty_gradient(torch.tensor(0.5), 2 * w)
    >>> out.item(), torch.autograd.grad(out, w)[0].item()
    (0.5, 0.0)
    """
    return value.detach() + 0 * (reference - reference.detach())


DEFAULT_RELATIVE_STEP = 0.02
"""The default ``fd_step``: every example moves by at most 2 % of its norm."""


def default_relative_step(dtype: torch.dtype) -> float:
    """The default relative step: ``max(0.02, sqrt(eps))`` of the compute dtype.

    A forward difference errs by ``O(h)`` (truncation) plus ``O(eps / h)`` (rounding
    in the two gradients it subtracts). On a smooth network ``tau = 0.02`` costs about
    1 % of relative error in the weight gradient, far below minibatch noise. On a ReLU
    network the exact gradient ignores ReLUs that switch, while the difference quotient
    sees every ReLU that switches between ``x`` and ``x + h v`` as a jump divided by
    ``h``: at steps below about ``1e-3`` a handful of such jumps dominate it (estimates
    at neighbouring steps disagree), from about ``1e-2`` on it averages over many and
    settles to a stable, smoothed gradient. Half-precision compute (autocast) needs
    ``tau >= sqrt(eps)`` for the rounding term: ``0.031`` in float16, ``0.088`` in
    bfloat16.

    Examples
    --------
    >>> default_relative_step(torch.float32), round(default_relative_step(torch.bfloat16), 3)
    (0.02, 0.088)
    """
    return max(DEFAULT_RELATIVE_STEP, math.sqrt(torch.finfo(dtype).eps))


def compute_dtype(inputs: torch.Tensor) -> torch.dtype:
    """The precision the model computes in: the autocast dtype when autocast is on.

    Examples
    --------
    >>> compute_dtype(torch.zeros(1, dtype=torch.float64))
    torch.float64
    """
    device_type = inputs.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return inputs.dtype


def finite_difference_step(
    inputs: torch.Tensor, direction: torch.Tensor, relative_step: float | None
) -> torch.Tensor:
    """The step ``h`` (0-d tensor) of ``x + h v``: no example moves by more than ``tau ||x_i||``.

    ``tau`` is ``relative_step``, or :func:`default_relative_step` of the compute dtype
    (:func:`compute_dtype`) where it is ``None``.

    ``h = tau / max_i(||v_i|| / s_i)`` with ``s_i = max(||x_i||, 1e-3 sqrt(D))`` (``D``
    values per example; the floor serves all-zero inputs), so the perturbation of every
    example is at most ``tau`` of its own norm, and exactly that for the example whose
    direction is largest relative to it. One ``h`` for the whole batch keeps the
    difference quotient exact when examples are coupled (train-mode BatchNorm). With
    ``v = 0`` (no penalty gradient) ``h = 1`` and the perturbation is 0. No host
    synchronisation.

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
    tau = relative_step or default_relative_step(compute_dtype(inputs))
    return torch.where(largest > 0, tau / largest, torch.ones_like(largest))


class PerturbedGradients(NamedTuple):
    """Result of :func:`perturbed_gradients`: first-order gradients at ``x + h v``.

    Attributes
    ----------
    step : Tensor
        ``h`` (0-d).
    parameters : list of Tensor
        The parameters the perturbed loss reached.
    parameter_gradients : list of Tensor
        ``grad_theta L(x + h v)`` for each of them (unscaled, the parameter's dtype).
    input_gradient : Tensor or None
        ``grad_x L(x + h v)`` when the inputs carry the caller's graph, else ``None``.
    extra_gradients : list of Tensor
        The gradients with respect to ``extra_inputs`` (zeros where unused).
    differences : bool
        ``True`` when every gradient above is already the difference
        ``grad L(x + h v) - grad L(x)`` (:func:`gradient_differences`): the caller then
        passes no ``L(x)`` to :func:`finite_difference_penalty`.
    """

    step: torch.Tensor
    parameters: list[torch.Tensor]
    parameter_gradients: list[torch.Tensor]
    input_gradient: torch.Tensor | None
    extra_gradients: tuple[torch.Tensor, ...] = ()
    differences: bool = False


def perturbed_gradients(
    loss_at: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    direction: torch.Tensor,
    step: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    *,
    scale: torch.Tensor | None = None,
    extra_inputs: Sequence[torch.Tensor] = (),
) -> PerturbedGradients:
    """``grad_theta L(x + h v)`` (and ``grad_x`` when ``inputs`` require grad), first order.

    One forward and one backward pass whose graph is freed before returning; only the
    gradients of the parameters that require grad (and, when ``inputs`` carry the
    caller's graph, of the perturbed input) are computed. With ``scale`` (a
    ``GradScaler``'s factor) the loss is scaled before the backward pass and the
    gradients unscaled after it, so half-precision gradients do not underflow. With
    ``step = 0`` these are the gradients at ``x`` itself (``x + 0 v`` is ``x``).

    Parameters
    ----------
    loss_at : callable
        ``x -> L(x)``, a 0-d tensor (the sum of the per-example losses or scores).
    inputs, direction : Tensor
        ``x`` and ``v``; ``x`` is not modified.
    step : Tensor
        ``h`` from :func:`finite_difference_step`.
    parameters : sequence of Tensor
        The weights to differentiate (those not requiring grad are skipped).
    scale : Tensor, optional
        From :func:`gradient_scale`.
    extra_inputs : sequence of Tensor
        Further leaves that ``loss_at`` uses (e.g. held normalisation statistics) whose
        gradients are wanted too.

    Examples
    --------
    >>> w = torch.tensor([2.0], requires_grad=True)
    >>> out = perturbed_gradients(lambda x: (w * x).sum(), torch.tensor([1.0]),
    ...                           torch.tensor([1.0]), torch.tensor(0.5), [w])
    >>> out.parameter_gradients  # d/dw of w * (1 + 0.5)
    [tensor([1.5000])]
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


def gradient_differences(
    perturbed: PerturbedGradients, reference: PerturbedGradients
) -> PerturbedGradients:
    """``perturbed`` minus ``reference`` (the same gradients at ``x``), in place.

    Both come from :func:`perturbed_gradients` of the same loss and targets, at
    ``x + h v`` and at ``x`` (``step = 0``). The result holds
    ``grad L(x + h v) - grad L(x)`` in ``perturbed``'s tensors, no new ones, and the
    step of ``perturbed``; ``differences`` is ``True``. A parameter reached in one pass
    only keeps its one gradient (negated at ``x``).

    Examples
    --------
    >>> w = torch.tensor([2.0], requires_grad=True)
    >>> loss_at = lambda x: (w * x).square().sum()  # d/dw = 2 w x^2
    >>> x, v = torch.tensor([1.0]), torch.tensor([1.0])
    >>> at_h = perturbed_gradients(loss_at, x, v, torch.tensor(0.5), [w])
    >>> at_x = perturbed_gradients(loss_at, x, v, torch.tensor(0.0), [w])
    >>> out = gradient_differences(at_h, at_x)  # 2 w (1.5^2 - 1^2)
    >>> out.parameter_gradients, out.step, out.differences
    ([tensor([5.])], tensor(0.5000), True)
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
    return PerturbedGradients(
        perturbed.step,
        parameters,
        gradients,
        _difference(perturbed.input_gradient, reference.input_gradient),
        tuple(a.sub_(b) for a, b in zip(perturbed.extra_gradients, reference.extra_gradients)),
        differences=True,
    )


def _difference(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    return b.neg_() if a is None else a.sub_(b)


class _ConstantGradients(torch.autograd.Function):
    """``0`` whose gradient with respect to ``tensors[i]`` is ``gradients[i]`` (times upstream).

    The backward pass scales the kept gradients *in place* and hands them to autograd,
    which accumulates the rest of the backward pass into them and moves them into
    ``.grad``: no second parameter-sized copy. So it can run once; a second backward
    pass through the same penalty (``retain_graph=True``) raises.
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
    value: torch.Tensor,
    reference_loss: torch.Tensor | None,
    perturbed: PerturbedGradients,
    inputs: torch.Tensor,
) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient is the finite-difference penalty gradient.

    Returns ``value.detach() + (T - T.detach())`` (exactly ``value``), with

    ``T = (sum_p <p, grad_p L(x + h v)> + <x, grad_x L(x + h v)> - L(x)) / h``,

    where the gradients at ``x + h v`` are constants from :func:`perturbed_gradients`
    and ``L(x)`` (``reference_loss``) is the caller's loss on the graph of the returned
    logits. So ``d/dtheta`` of the result is
    ``[grad_theta L(x + h v) - grad_theta L(x)] / h``, the forward difference of
    ``grad_theta (v . grad_x L)`` -- and the same holds for ``d/dx`` when the inputs
    come out of the caller's trainable modules. ``reference_loss`` is ``None`` (or only
    what ``perturbed`` leaves to the caller's graph) when the constants are
    differences already (``perturbed.differences``, :func:`gradient_differences`, or a
    perturbed loss that subtracts ``L(x)`` itself): then no gradient crossing the
    caller's graph is multiplied by ``1/h``, only the constants are. The kept weight
    gradients are handed to autograd in place (see :class:`_ConstantGradients`), so
    they cost no second copy, and the penalty can be back-propagated once.

    Examples
    --------
    >>> w = torch.tensor([2.0], requires_grad=True)
    >>> x, v = torch.tensor([1.0]), torch.tensor([1.0])
    >>> loss_at = lambda z: (w * z) ** 2  # L = w^2 x^2, g = 2 w^2 x
    >>> out = perturbed_gradients(loss_at, x, v, torch.tensor(1e-3), [w])
    >>> penalty = finite_difference_penalty(torch.tensor(4.0), loss_at(x).sum(), out, x)
    >>> penalty.item(), round(torch.autograd.grad(penalty, w)[0].item(), 2)  # d(v g)/dw = 4 w x
    (4.0, 8.0)

    The same gradient from differences, with no ``L(x)`` on the caller's graph:

    >>> at_x = perturbed_gradients(loss_at, x, v, torch.tensor(0.0), [w])
    >>> out = gradient_differences(perturbed_gradients(loss_at, x, v, torch.tensor(1e-3), [w]),
    ...                            at_x)
    >>> penalty = finite_difference_penalty(torch.tensor(4.0), None, out, x)
    >>> round(torch.autograd.grad(penalty, w)[0].item(), 2)
    8.0
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


FINITE_DIFFERENCE_WAY_OUT = "or keep it and use mode='finite_difference' (first derivatives only)"
"""What the double-backprop losses add to ``check_not_compiled``'s refusal."""


def has_compiled_module(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is ``torch.compile``'d (either way).

    Examples
    --------
    >>> has_compiled_module(nn.Sequential(nn.Linear(2, 2)))
    False
    """
    return any(
        hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None
        for module in model.modules()
    )


def _device_rng_state(device: torch.device) -> tuple[Any, int, torch.Tensor] | None:
    """An accelerator ``device``'s module, index and random state; ``None`` for the CPU."""
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    if getattr(module, "get_rng_state", None) is None:
        return None
    index = device.index if device.index is not None else module.current_device()  # type: ignore[union-attr]
    return module, index, module.get_rng_state(index)  # type: ignore[union-attr]


@contextlib.contextmanager
def undone_on_error(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Undo the block's side effects on the model and the random state when it raises.

    BatchNorm running statistics are written back and the random generators (CPU and
    ``device``) rewound, so a call made after the failed one behaves as if the failed
    one had not been made. (The exact mode's passes take gradients with
    ``torch.autograd.grad``: no ``.grad`` is written.)

    Examples
    --------
    >>> bn = nn.BatchNorm1d(2).train()
    >>> state = torch.random.get_rng_state()
    >>> try:
    ...     with undone_on_error(bn, torch.device("cpu")):
    ...         _ = bn(torch.randn(8, 2) + 5)
    ...         raise KeyError("late failure")
    ... except KeyError:
    ...     pass
    >>> bn.running_mean.tolist(), torch.equal(torch.random.get_rng_state(), state)
    ([0.0, 0.0], True)
    """
    cpu_state = torch.random.get_rng_state()
    device_state = _device_rng_state(device)
    try:
        with batchnorm_statistics_restored_on_error(model):
            yield
    except BaseException:
        torch.random.set_rng_state(cpu_state)
        if device_state is not None:
            module, index, state = device_state
            module.set_rng_state(state, index)
        raise


def check_penalty_settings(
    model: nn.Module, mode: object, fd_step: object, grad_scaler: object
) -> float | None:
    """Validate ``mode``, ``fd_step`` and ``grad_scaler``; return the relative step.

    ``mode="double_backprop"`` refuses a ``torch.compile``'d model (compiled graphs
    cannot be differentiated twice), naming the finite-difference way out.

    Examples
    --------
    >>> check_penalty_settings(nn.Linear(2, 2), "finite_difference", 0.01, None)
    0.01
    >>> check_penalty_settings(nn.Linear(2, 2), "double_backprop", None, object())
    Traceback (most recent call last):
    ...
    TypeError: grad_scaler must be a torch.amp.GradScaler (an object with .scale(tensor)), \
got object
    """
    step = check_mode(mode, fd_step)
    if mode == "double_backprop":
        check_not_compiled(model, also=FINITE_DIFFERENCE_WAY_OUT)
    if grad_scaler is not None and not callable(getattr(grad_scaler, "scale", None)):
        raise TypeError(
            "grad_scaler must be a torch.amp.GradScaler (an object with .scale(tensor)), "
            f"got {type(grad_scaler).__name__}"
        )
    return step


class InputGradientPenalty:
    """The base of the two penalties on the input gradient: what they share around the modes.

    It keeps the model and the mode settings (checked by :func:`check_penalty_settings`),
    resolves ``mode="auto"`` (:meth:`_in_resolved_mode`),
    opens every call with the same checks (:meth:`_training_call`), gives the block of a
    double-backward gradient (:meth:`_double_backward_pass`), runs the double-backward
    check once per instance (:meth:`_check_double_backward_once`), and takes the
    gradient pass, the step and the perturbed pass of a finite-difference step
    (:meth:`_gradient_pass`, :meth:`_finite_difference_step`, :meth:`_perturbed_pass`).
    The subclasses hold their penalty and the order of the passes in their two modes.

    Parameters
    ----------
    model : nn.Module
        The model being trained (checked by the subclass).
    mode, fd_step, grad_scaler
        As the subclasses document them.

    Attributes
    ----------
    mode : str
        The mode asked for: ``"auto"``, ``"double_backprop"`` or ``"finite_difference"``.
    resolved_mode : str or None
        The mode the calls run in: ``mode`` itself when it is explicit; for ``"auto"``,
        ``None`` until the first call that gets as far as the input gradient has
        chosen (``"finite_difference"`` at once for a ``torch.compile``'d model).

    Examples
    --------
    >>> penalty = InputGradientPenalty(nn.Linear(2, 2), "finite_difference", 0.01, None)
    >>> penalty.mode, penalty.resolved_mode, penalty.fd_step, penalty.grad_scaler
    ('finite_difference', 'finite_difference', 0.01, None)
    >>> InputGradientPenalty(nn.Linear(2, 2), "auto", None, None).resolved_mode is None
    True
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        fd_step: float | None,
        grad_scaler: GradientScaler | None,
    ) -> None:
        self.fd_step = check_penalty_settings(model, mode, fd_step, grad_scaler)
        self.model = model
        self.mode = mode
        self.grad_scaler = grad_scaler
        self._double_backward_checked = False
        self.resolved_mode: str | None = None if mode == AUTO else mode
        if mode == AUTO and has_compiled_module(model):
            self._fall_back("the model is torch.compile'd (compiled graphs cannot be "
                            "differentiated twice)")

    def _fall_back(self, reason: str) -> None:
        """Resolve ``"auto"`` to ``"finite_difference"``, with the one warning saying why."""
        self.resolved_mode = "finite_difference"
        warnings.warn(
            f"{type(self).__name__}(mode='auto'): {reason}; training through the penalty "
            "with mode='finite_difference' (first derivatives only, an estimate of the "
            "exact weight gradient) from now on. Pass mode='finite_difference' to choose "
            "it explicitly and silence this warning.",
            UserWarning,
            stacklevel=4,
        )

    def _in_resolved_mode(
        self,
        double_backprop: Callable[[], _T],
        finite_difference: Callable[[], _T],
        device: torch.device,
    ) -> _T:
        """Run the call in the resolved mode; on ``"auto"``'s first call, choose it.

        The first call tries ``double_backprop``. When it finds that the model cannot
        be differentiated twice (a :class:`DoubleBackwardUnavailable`, raised by
        :func:`check_double_backward` on the graph of the input gradient or by
        :func:`double_backward_errors_explained` on autograd's own error, before any
        backward pass of the caller), its side effects are undone
        (:func:`undone_on_error`: BatchNorm statistics, random state; no ``.grad`` was
        written), a ``UserWarning`` names the obstacle, and this call and the following
        ones run ``finite_difference``. Otherwise the exact mode is kept (logged at INFO
        level on the ``captum_regularized.regularizers`` logger). A call that fails for
        another reason (bad labels, ...) chooses nothing.
        """
        if self.resolved_mode == "finite_difference":
            return finite_difference()
        if self.resolved_mode == "double_backprop":
            return double_backprop()
        try:
            with undone_on_error(self.model, device):
                out = double_backprop()
        except DoubleBackwardUnavailable as error:
            self._fall_back(f"the model contains {error.obstacle}, which cannot be "
                            "differentiated twice")
            return finite_difference()
        self.resolved_mode = "double_backprop"
        _LOG.info("%s(mode='auto'): the model can be differentiated twice; using "
                  "mode='double_backprop' (exact)", type(self).__name__)
        return out

    @contextlib.contextmanager
    def _training_call(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> Iterator[torch.Tensor | None]:
        """Check a training batch and yield the loss scale (``None`` without a scaler).

        Refuses inference mode, non-finite inputs and bad labels before any forward
        pass; the block runs with the model's BatchNorm statistics restored should it
        raise.
        """
        check_autograd_available(type(self).__name__)
        check_training_batch(
            inputs, labels, class_indices=True, model=unwrap_parallel(self.model)
        )
        scale = gradient_scale(self.grad_scaler, inputs)
        with batchnorm_statistics_restored_on_error(self.model):
            yield scale

    @contextlib.contextmanager
    def _double_backward_pass(self) -> Iterator[None]:
        """The block that takes ``g`` with ``create_graph=True`` in ``"double_backprop"``.

        Attention runs on the math kernel (:func:`double_backward_attention`), and
        autograd's "no second derivative" errors name the other mode
        (:func:`double_backward_errors_explained`).
        """
        with double_backward_errors_explained(type(self).__name__), double_backward_attention():
            yield

    def _gradient_pass(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """:func:`gradient_pass` of the model: where ``"finite_difference"`` takes ``g``."""
        return gradient_pass(self.model, device)

    def _finite_difference_step(
        self, inputs: torch.Tensor, direction: torch.Tensor
    ) -> torch.Tensor:
        """:func:`finite_difference_step` along ``direction`` with this penalty's ``fd_step``."""
        return finite_difference_step(inputs, direction, self.fd_step)

    def _check_double_backward_once(self, *outputs: torch.Tensor) -> None:
        """:func:`check_double_backward` on the first ``"double_backprop"`` call only."""
        if not self._double_backward_checked:
            check_double_backward(type(self).__name__, *outputs)
            self._double_backward_checked = True

    def _perturbed_pass(
        self,
        loss_at: Callable[[torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        direction: torch.Tensor,
        step: torch.Tensor,
        *,
        scale: torch.Tensor | None = None,
        extra_inputs: Sequence[torch.Tensor] = (),
        loss_is_difference: bool = False,
    ) -> PerturbedGradients:
        """:func:`perturbed_gradients` of the model's weights, in an :func:`extra_pass`.

        Under loss scaling (``scale`` given) the gradients the scaler inspects must not
        overflow where a plain step's would not:

        * unless ``loss_at`` subtracts its value at ``x`` itself
          (``loss_is_difference``), a second pass takes the same gradients at ``x``
          (same dropout masks) and the result holds their differences
          (:func:`gradient_differences`). The caller then leaves ``L(x)`` out of
          :func:`finite_difference_penalty`, so its half-precision backward pass
          carries no term ``1/h`` larger than a plain step's; ``1/h`` multiplies the
          differences only, in the parameters' precision. This costs one more
          first-order pass and, while it runs, a second parameter-sized gradient;
        * the passes back-propagate ``scale * L / B`` (``B = inputs.shape[0]``), the
          batch mean as in the training loss rather than the sum, whose weight
          gradients would be ``B`` times a plain step's; they are unscaled by the same
          factor, so the result does not change.

        Without a scaler (float32, bfloat16: no overflow) the caller's pass provides
        ``L(x)`` for free.
        """
        parameters = list(self.model.parameters())
        if scale is not None:
            scale = scale / inputs.shape[0]

        def gradients_at(h: torch.Tensor) -> PerturbedGradients:
            with extra_pass(self.model, inputs.device):
                return perturbed_gradients(
                    loss_at, inputs, direction, h, parameters,
                    scale=scale, extra_inputs=extra_inputs,
                )

        perturbed = gradients_at(step)
        if scale is None or loss_is_difference:
            return perturbed
        return gradient_differences(perturbed, gradients_at(torch.zeros_like(step)))
