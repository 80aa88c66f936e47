"""ReLU hook switching: one forward pass, the guided-backprop rule for one backward pass.

Guided backpropagation (Springenberg et al.) changes only the backward pass of every
ReLU: the gradient reaching the ReLU's input is ``relu(grad_out) * (x > 0)`` instead
of ``grad_out * (x > 0)``. Clamping the gradient that reaches the ReLU's *output* at
zero gives exactly that, so the rule is a tensor hook on each ReLU output.

:class:`GuidedReLUSwitch` records those hooks during a forward pass and keeps them
*off*; ``with switch.guided(): torch.autograd.grad(...)`` turns them on for one
backward pass. The same forward graph therefore serves a guided backward pass and
ordinary ones (plain gradients, ``create_graph=True`` double backpropagation, the
training loss), and BatchNorm statistics move once.

ReLUs are found by a :class:`torch.overrides.TorchFunctionMode` active during the
forward pass. It sees ``nn.ReLU`` modules (in-place or not, reused or not) *and*
functional ReLUs -- ``F.relu``, ``F.relu_``, ``torch.relu``, ``torch.relu_``,
``Tensor.relu``, ``Tensor.relu_`` -- which Captum's module hooks silently miss. For
models built from ``nn.ReLU`` modules the result equals
``captum.attr.GuidedBackprop``. Nothing is registered on the model: the hooks live on
the forward graph's tensors and the mode is popped when the forward pass ends, even
on an exception.

``per_example=True`` also holds train-mode BatchNorm batch statistics constant in the
gradient passes (see :mod:`~captum_regularized._internal.per_example_batchnorm`), so
each example's gradient is that of its own score.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from captum_regularized._internal.captum_compat import (
    TargetType,
    format_additional_args,
    run_forward,
)
from captum_regularized._internal.input_gradients import (
    check_not_modified_in_place,
    gradient_leaf,
)
from captum_regularized._internal.model_state import find_module
from captum_regularized._internal.per_example_batchnorm import (
    batch_norm_with_switchable_statistics,
)
from captum_regularized._internal.targets import target_scores

__all__ = [
    "RELU_FUNCTIONS",
    "GuidedAndPlain",
    "GuidedReLUSwitch",
    "check_not_compiled",
    "guided_and_plain_gradients",
    "recording_relus",
]

RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
)
"""The ReLU entry points the guided rule applies to (``F.relu_`` is ``torch.relu_``;
``nn.ReLU`` calls ``F.relu``)."""


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


class GuidedReLUSwitch:
    """Switchable guided-backprop hooks on the ReLU outputs of one forward graph.

    Examples
    --------
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> switch = GuidedReLUSwitch()
    >>> with recording_relus(switch):
    ...     y = (torch.relu(x) * torch.tensor([-1.0, 3.0])).sum()
    >>> switch.num_relus
    1
    >>> with switch.guided():
    ...     torch.autograd.grad(y, x, retain_graph=True)[0].tolist()
    [0.0, 3.0]
    >>> torch.autograd.grad(y, x)[0].tolist()
    [-1.0, 3.0]
    """

    def __init__(self) -> None:
        self.active = False
        self.statistics_held = False
        self.num_relus = 0

    def _hook(self, grad: torch.Tensor) -> torch.Tensor | None:
        return grad.clamp_min(0) if self.active else None

    def _statistics_hook(self, grad: torch.Tensor) -> torch.Tensor | None:
        return torch.zeros_like(grad) if self.statistics_held else None

    def attach_statistics(self, statistic: torch.Tensor) -> None:
        """Put the (switched-off) "hold constant" hook on a BatchNorm batch statistic."""
        if statistic.requires_grad:
            statistic.register_hook(self._statistics_hook)

    def attach(self, relu_output: torch.Tensor) -> None:
        """Put the (switched-off) guided hook on one ReLU output that is in the graph."""
        if relu_output.requires_grad:
            relu_output.register_hook(self._hook)
            self.num_relus += 1

    @contextlib.contextmanager
    def guided(self) -> Iterator[None]:
        """Apply the guided rule in backward passes run inside this block."""
        self.active = True
        try:
            yield
        finally:
            self.active = False

    @contextlib.contextmanager
    def per_example(self) -> Iterator[None]:
        """Hold recorded BatchNorm batch statistics constant in backward passes run inside."""
        self.statistics_held = True
        try:
            yield
        finally:
            self.statistics_held = False


class _ReLURecorder(TorchFunctionMode):
    """Hands the output of every ReLU call to a :class:`GuidedReLUSwitch`."""

    def __init__(self, switch: GuidedReLUSwitch, split_batchnorm: bool) -> None:
        super().__init__()
        self.switch = switch
        self.split_batchnorm = split_batchnorm

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.split_batchnorm and func is F.batch_norm:
            bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            call = bound.arguments
            if call["training"] and call["input"].requires_grad:
                return batch_norm_with_switchable_statistics(
                    call["input"],
                    call["running_mean"],
                    call["running_var"],
                    call["weight"],
                    call["bias"],
                    call["momentum"],
                    call["eps"],
                    self.switch.attach_statistics,
                )
        out = func(*args, **kwargs)
        if func in RELU_FUNCTIONS and isinstance(out, torch.Tensor):
            self.switch.attach(out)
        return out


@contextlib.contextmanager
def recording_relus(
    switch: GuidedReLUSwitch, split_batchnorm: bool = False
) -> Iterator[GuidedReLUSwitch]:
    """Run a forward pass with every ReLU output handed to ``switch`` (mode popped on exit).

    With ``split_batchnorm``, train-mode ``F.batch_norm`` calls (``nn.BatchNorm*``) are
    computed from their parts so that ``switch.per_example()`` can hold their batch
    statistics constant (see :mod:`~captum_regularized._internal.per_example_batchnorm`).
    """
    with _ReLURecorder(switch, split_batchnorm):
        yield switch


def check_not_compiled(model: nn.Module | None, name: str = "model") -> None:
    """Raise ``TypeError`` for a ``torch.compile``'d module: it cannot double-backward.

    Examples
    --------
    >>> check_not_compiled(nn.Linear(2, 2))
    """
    if model is None:
        return
    for module_name, module in model.named_modules():
        where = f"{name}.{module_name}" if module_name else name
        if hasattr(module, "_orig_mod"):
            raise TypeError(
                f"{where} is a torch.compile'd module; compiled graphs cannot be "
                "differentiated twice (double backpropagation). Pass the original module "
                f"({where}._orig_mod) instead."
            )
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise TypeError(
                f"{where} was compiled in place (module.compile()); compiled graphs cannot "
                "be differentiated twice (double backpropagation). Use a module that was "
                "not compiled."
            )


class GuidedAndPlain(NamedTuple):
    """Result of :func:`guided_and_plain_gradients`.

    Attributes
    ----------
    logits : Tensor
        The model output (with its graph when ``create_graph=True``, else detached).
    plain : Tensor
        ``d(sum of target scores)/d inputs`` (differentiable when ``create_graph=True``).
    guided : Tensor
        The guided-backprop gradient of the same scores (always detached).
    """

    logits: torch.Tensor
    plain: torch.Tensor
    guided: torch.Tensor


def guided_and_plain_gradients(
    forward_func: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    create_graph: bool = False,
    *,
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    per_example: bool = False,
) -> GuidedAndPlain:
    """Plain and guided-backprop input gradients of the target scores from one forward pass.

    Parameters
    ----------
    forward_func : callable
        The model (or a function calling it). ReLUs are found while it runs.
    inputs : Tensor
        A batch ``(B, ...)``; it is not modified and its ``requires_grad`` is left alone.
        The gradients are taken with respect to a detached leaf, except with
        ``create_graph=True`` and inputs on an autograd graph: then with respect to a
        copy still on that graph, so the logits and the plain gradient back-propagate
        into whatever produced ``inputs`` (see
        :func:`~captum_regularized._internal.input_gradients.gradient_leaf`).
    target : int, list, tuple, Tensor or None
        Any Captum target form; ``None`` means the predicted class for a ``(B, C)``
        output (see :func:`~captum_regularized._internal.targets.target_scores`).
    additional_forward_args : Any
        Passed after ``inputs``, as in Captum.
    create_graph : bool
        Keep the graph of the plain gradient (and of the logits, down to the caller's
        graph of ``inputs``) for double backpropagation. With ``False`` the forward
        graph is freed and the logits come back detached.
    score_fn : callable, optional
        ``score_fn(output) -> (B,)`` picks the scores to differentiate instead of
        ``target`` (for callers that validated their targets already and want no host
        synchronisation).
    per_example : bool
        Hold the batch statistics of train-mode BatchNorm layers (``nn.BatchNorm*``,
        not ``SyncBatchNorm``) constant in both gradient passes, so that each example's
        gradient is that of its own score only. The forward values, the running
        statistics and later backward passes (the training loss) are unchanged. Without
        it (as in Captum), train-mode BatchNorm mixes the other examples' scores in.

    Returns
    -------
    GuidedAndPlain
        ``(logits, plain, guided)``. As in Captum, the gradients are those of the *sum*
        of the target scores; in train mode BatchNorm couples the examples of a batch.

    Raises
    ------
    ValueError
        When no ReLU (module or functional) is on the graph: the guided gradient would
        silently equal the plain one.
    TypeError
        For a ``torch.compile``'d module or a non-floating input.
    RuntimeError
        When the forward pass modifies its input in place.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> logits, plain, guided = guided_and_plain_gradients(model, torch.rand(5, 3), target=1)
    >>> logits.shape, plain.shape, guided.shape
    (torch.Size([5, 2]), torch.Size([5, 3]), torch.Size([5, 3]))
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")
    check_not_compiled(find_module(forward_func), "forward_func")
    leaf = gradient_leaf(inputs, keep_graph=create_graph)
    version = leaf._version
    switch = GuidedReLUSwitch()
    with torch.enable_grad():
        with recording_relus(switch, split_batchnorm=per_example):
            args = format_additional_args(additional_forward_args)
            logits = run_forward(forward_func, (leaf,), args)
        check_not_modified_in_place(leaf, version, "forward_func")
        if switch.num_relus == 0:
            raise ValueError(
                "forward_func has no ReLU (nn.ReLU or functional relu) on the path from the "
                "inputs to the output, so the guided gradient equals the plain one; guided "
                "backprop needs a ReLU network"
            )
        scores = target_scores(logits, target) if score_fn is None else score_fn(logits)
        total = scores.sum()
        with switch.per_example():
            with switch.guided():
                (guided,) = torch.autograd.grad(total, leaf, retain_graph=True)
            (plain,) = torch.autograd.grad(total, leaf, create_graph=create_graph)
    if not create_graph:
        logits = logits.detach()
    return GuidedAndPlain(logits, plain, guided.detach())
