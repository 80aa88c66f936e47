"""The base of the two penalties on the input gradient: settings, checks and the mode.

:class:`~captum_regularized.regularizers.GuidedGradientRegularizer` and
:class:`~captum_regularized.regularizers.GradientNormPenalty` train the weights through
a penalty on the input gradient ``g`` by ``"double_backprop"`` (``g`` taken with
``create_graph=True`` inside :func:`double_backward_pass`) or by
``"finite_difference"`` (first derivatives only,
:mod:`~captum_regularized.regularizers._finite_difference`); ``"auto"`` picks one on the
first call. How, and why, is in :doc:`/design_notes/gradient_penalties`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.guided_relu import check_not_compiled
from captum_regularized._internal.input_gradients import check_training_batch
from captum_regularized._internal.model_state import (
    batchnorm_statistics_restored_on_error,
    unwrap_parallel,
)

__all__ = ["GradientScaler", "InputGradientPenalty", "double_backward_pass", "is_compiled"]

_MODES = ("auto", "double_backprop", "finite_difference")
_LOG = logging.getLogger("captum_regularized.regularizers")
_T = TypeVar("_T")


class GradientScaler(Protocol):
    """What the losses use of a ``torch.amp.GradScaler``: ``scale(tensor) -> tensor``."""

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        """Multiply ``outputs`` by the current loss scale."""
        ...


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` itself is ``torch.compile``'d (either way)."""
    return hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None


def _checked_fd_step(
    model: nn.Module, mode: object, fd_step: object, grad_scaler: object
) -> float | None:
    """Validate ``mode``, ``fd_step`` and ``grad_scaler``; return the relative step."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    step = None
    if fd_step is not None:
        if mode == "double_backprop":
            raise ValueError(
                f"fd_step is only used by mode='finite_difference' (or 'auto' when it falls "
                f"back to it); got fd_step={fd_step!r} with mode={mode!r}"
            )
        if isinstance(fd_step, bool) or not isinstance(fd_step, (int, float)):
            raise TypeError(f"fd_step must be a float, got {type(fd_step).__name__}")
        if not math.isfinite(fd_step) or not 0 < fd_step < 1:
            raise ValueError(f"fd_step must be a relative step in (0, 1), got {fd_step!r}")
        step = float(fd_step)
    if mode == "double_backprop":
        check_not_compiled(
            model, also="or keep it and use mode='finite_difference' (first derivatives only)"
        )
    if grad_scaler is not None and not callable(getattr(grad_scaler, "scale", None)):
        raise TypeError(
            "grad_scaler must be a torch.amp.GradScaler (an object with .scale(tensor)), "
            f"got {type(grad_scaler).__name__}"
        )
    return step


class DoubleBackwardUnavailable(RuntimeError):
    """The model cannot be differentiated twice; ``obstacle`` names what in it cannot."""

    def __init__(self, who: str, obstacle: str) -> None:
        super().__init__(
            f"{who}(mode='double_backprop') differentiates the input gradient a second "
            f"time, but the model contains {obstacle}, which cannot be differentiated "
            "twice; use mode='finite_difference', which needs first derivatives only"
        )
        self.obstacle = obstacle


_ONCE_DIFFERENTIABLE_CODE = once_differentiable(lambda ctx: None).__code__
_FAILING_NODES = frozenset({"DelayedError", "NotImplemented", "Error"})
_DOUBLE_BACKWARD_ERRORS = re.compile(
    r"differentiate twice|once_differentiable|double backward|derivative for .* is not "
    r"implemented|does not currently support double backward",
    re.IGNORECASE,
)


def _double_backward_obstacle(*outputs: torch.Tensor) -> str | None:
    """Name what in the autograd graphs of ``outputs`` cannot be differentiated twice.

    A custom ``autograd.Function`` whose backward is ``@once_differentiable``, or a
    node autograd puts where a second derivative is missing (which would raise only in
    the caller's backward pass); ``None`` when there is none.
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


@contextlib.contextmanager
def double_backward_pass(who: str) -> Iterator[None]:
    """The block that takes ``g`` with ``create_graph=True``.

    Attention runs on PyTorch's math kernel (the fused ones have no double backward),
    and autograd's "no second derivative" errors become a
    :class:`DoubleBackwardUnavailable` that names the other mode.
    """
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    except RuntimeError as error:
        if not _DOUBLE_BACKWARD_ERRORS.search(str(error)):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "?"
        obstacle = f"an operation without a double backward ({first_line})"
        raise DoubleBackwardUnavailable(who, obstacle) from error


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
def _undone_on_error(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Write back the BatchNorm statistics and rewind the random generators (CPU and
    ``device``) when the block raises."""
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


class InputGradientPenalty:
    """What the two penalties on the input gradient share around their two modes.

    The subclasses hold their penalty and the passes of each mode.

    Attributes
    ----------
    mode : str
        The mode asked for: ``"auto"``, ``"double_backprop"`` or ``"finite_difference"``.
    resolved_mode : str or None
        The mode the calls run in; for ``"auto"``, ``None`` until the first call chose.

    Examples
    --------
    >>> penalty = InputGradientPenalty(nn.Linear(2, 2), "finite_difference", 0.01, None)
    >>> penalty.mode, penalty.resolved_mode, penalty.fd_step, penalty.grad_scaler
    ('finite_difference', 'finite_difference', 0.01, None)
    >>> InputGradientPenalty(nn.Linear(2, 2), "auto", None, None).resolved_mode is None
    True
    """

    def __init__(
        self, model: nn.Module, mode: str, fd_step: float | None,
        grad_scaler: GradientScaler | None,
    ) -> None:
        self.fd_step = _checked_fd_step(model, mode, fd_step, grad_scaler)
        self.model = model
        self.mode = mode
        self.grad_scaler = grad_scaler
        self._double_backward_checked = False
        self.resolved_mode: str | None = None if mode == "auto" else mode
        if mode == "auto" and any(is_compiled(module) for module in model.modules()):
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
        self, double_backprop: Callable[[], _T], finite_difference: Callable[[], _T],
        device: torch.device,
    ) -> _T:
        """Run the call in the resolved mode; on ``"auto"``'s first call, choose it.

        A :class:`DoubleBackwardUnavailable` on the first try of ``double_backprop``
        undoes its side effects, warns, and runs ``finite_difference`` from then on.
        """
        if self.resolved_mode == "finite_difference":
            return finite_difference()
        if self.resolved_mode == "double_backprop":
            return double_backprop()
        try:
            with _undone_on_error(self.model, device):
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
        """Check a training batch and yield the loss scale (``None`` without an enabled
        scaler); the BatchNorm statistics are restored should the block raise."""
        check_autograd_available(type(self).__name__)
        check_training_batch(
            inputs, labels, class_indices=True, model=unwrap_parallel(self.model)
        )
        scale = None
        scaler = self.grad_scaler
        is_enabled = getattr(scaler, "is_enabled", None)
        if scaler is not None and not (callable(is_enabled) and not is_enabled()):
            one = torch.ones((), device=inputs.device, dtype=torch.float32)
            scale = scaler.scale(one).to(torch.float32)
        with batchnorm_statistics_restored_on_error(self.model):
            yield scale

    def _check_double_backward_once(self, *outputs: torch.Tensor) -> None:
        """On the first ``"double_backprop"`` call, refuse a graph that cannot be
        differentiated twice before the caller's backward pass fails on it."""
        if not self._double_backward_checked:
            obstacle = _double_backward_obstacle(*outputs)
            if obstacle is not None:
                raise DoubleBackwardUnavailable(type(self).__name__, obstacle)
            self._double_backward_checked = True
