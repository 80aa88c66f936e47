"""The guided rule for one backward pass, on ReLU and the other rectifying activations.

Guided backpropagation (Springenberg et al.) changes only the backward pass of every
ReLU: the gradient reaching the ReLU's input is ``relu(grad_out) * (z > 0)`` instead
of ``grad_out * (z > 0)``. This module applies the same idea to every activation
``y = sigma(z)`` of :data:`GUIDED_ACTIVATIONS`, with one of two rules
(:data:`GUIDED_RULES`, chosen by ``rule=``):

``"gated"`` (the default)
    ``grad_in = sigma'(z) * 1[z > 0] * max(grad_out, 0)``: only units that are on
    (``z > 0``) pass, and only positive evidence. For ReLU this *is* Springenberg's
    rule (``sigma'(z) = 1[z > 0]``), so for ``nn.ReLU`` models the result equals
    ``captum.attr.GuidedBackprop``; the same holds for ReLU6 (``sigma' = 1[0 < z < 6]``)
    and for LeakyReLU / PReLU / RReLU, whose negative side it closes. For smooth
    activations (GELU, SiLU, Mish, ELU, Softplus, ...) it keeps the activation's own
    slope where ``z > 0`` and, like ReLU, passes nothing where ``z <= 0``; every
    activation's local factor is then ``>= 0`` (for Hardtanh / ReLU6 ``0`` above the
    upper bound), so the guided gradient keeps the sign structure of classic guided
    backprop.
``"ungated"``
    ``grad_in = sigma'(z) * max(grad_out, 0)``: no ``1[z > 0]`` gate, only the
    upstream gradient is rectified. Identical to ``"gated"`` for ReLU and ReLU6; for
    the others the negative side passes with the activation's own slope (for GELU,
    SiLU and Mish that slope can be negative, so the guided gradient can be too).

Each rule is a tensor hook on the activation's *output* that replaces ``grad_out`` by
``max(grad_out, 0)`` (times the gate ``1[z > 0]`` for ``"gated"``); autograd's own
backward of the activation then multiplies by ``sigma'(z)``. The gate is recorded as
a boolean tensor during the forward pass, before an in-place form overwrites ``z``
(one byte per element of each non-ReLU activation; ReLU and ReLU6 need none).
Sigmoid / Hardsigmoid gates (squeeze-and-excitation), softmax (attention), LayerNorm,
Tanh and everything else keep their ordinary backward.

:class:`GuidedActivationSwitch` records those hooks during a forward pass and keeps
them *off*; ``with switch.guided(): torch.autograd.grad(...)`` turns them on for one
backward pass. The same forward graph therefore serves a guided backward pass and
ordinary ones (plain gradients, ``create_graph=True`` double backpropagation, the
training loss, a plain gradient to a layer for Guided Grad-CAM), and BatchNorm
statistics move once.

Activations are found by a :class:`torch.overrides.TorchFunctionMode` active during
the forward pass. It sees the modules (``nn.ReLU``, ``nn.GELU``, ...: in-place or not,
reused or not) *and* the functional forms (``F.relu``, ``torch.relu_``,
``Tensor.relu``, ``F.gelu``, ``F.silu(inplace=True)``, ...), which Captum's module
hooks silently miss (Captum's ``GuidedBackprop`` also knows ``nn.ReLU`` only). For
models built from ``nn.ReLU`` modules the result equals ``captum.attr.GuidedBackprop``.
Nothing is registered on the model: the hooks live on the forward graph's tensors and
the mode is popped when the forward pass ends, even on an exception.

``per_example=True`` also holds train-mode BatchNorm batch statistics constant in the
gradient passes (see :mod:`~captum_regularized._internal.per_example_batchnorm`), so
each example's gradient is that of its own score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized._internal.captum_compat import (
    TargetType,
    format_additional_args,
    run_forward,
)
from captum_regularized._internal.input_gradients import (
    check_not_modified_in_place,
    gradient_leaf,
)
from captum_regularized._internal.model_state import find_module, unwrap_data_parallel
from captum_regularized._internal.per_example_batchnorm import (
    TrainBatchNormCalls,
    batch_norm_with_switchable_statistics,
)
from captum_regularized._internal.targets import target_scores

__all__ = [
    "GUIDED_ACTIVATIONS",
    "GUIDED_RULES",
    "RELU_FUNCTIONS",
    "SUPPORTED_ACTIVATIONS",
    "GuidedActivationSwitch",
    "GuidedAndPlain",
    "check_guided_model",
    "check_guided_rule",
    "check_has_activations",
    "check_not_compiled",
    "check_not_scripted",
    "guided_and_plain_gradients",
    "guided_forward",
    "recording_activations",
]

GUIDED_RULES: dict[str, str] = {
    "gated": "grad_in = sigma'(z) * 1[z > 0] * max(grad_out, 0)",
    "ungated": "grad_in = sigma'(z) * max(grad_out, 0)",
}
"""The guided rules by name (see the module notes); ``"gated"`` is the default."""

RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
)
"""The ReLU entry points (``F.relu_`` is ``torch.relu_``; ``nn.ReLU`` calls ``F.relu``)."""


def _existing(owner: Any, *names: str) -> list[Callable[..., Any]]:
    return [getattr(owner, name) for name in names if hasattr(owner, name)]


_NN = torch._C._nn
_FAMILIES: dict[str, list[Callable[..., Any]]] = {
    "ReLU": sorted(RELU_FUNCTIONS, key=repr),
    # nn.ReLU6 is a Hardtanh(0, 6) and calls F.hardtanh
    "ReLU6": [F.relu6, *_existing(_NN, "relu6", "relu6_")],
    "Hardtanh": [F.hardtanh, *_existing(_NN, "hardtanh", "hardtanh_")],
    "LeakyReLU": [F.leaky_relu, *_existing(_NN, "leaky_relu", "leaky_relu_")],
    "PReLU": [F.prelu, torch.prelu, *_existing(torch.Tensor, "prelu")],
    "RReLU": [F.rrelu, torch.rrelu, torch.rrelu_],
    "ELU": [F.elu, *_existing(_NN, "elu", "elu_")],
    "CELU": [F.celu, torch.celu, torch.celu_],
    "SELU": [F.selu, torch.selu, torch.selu_],
    "SiLU": [F.silu, *_existing(_NN, "silu", "silu_")],
    "Hardswish": [F.hardswish, *_existing(_NN, "hardswish", "hardswish_")],
    "GELU": [F.gelu, *_existing(_NN, "gelu")],
    "Mish": [F.mish, *_existing(_NN, "mish", "mish_")],
    "Softplus": [F.softplus, *_existing(_NN, "softplus")],
}

GUIDED_ACTIVATIONS: dict[Callable[..., Any], str] = {
    function: family for family, functions in _FAMILIES.items() for function in functions
}
"""Every function the guided rule applies to, mapped to its activation's name.

Modules reach these functions: ``nn.ReLU`` -> ``F.relu``, ``nn.ReLU6`` and
``nn.Hardtanh`` -> ``F.hardtanh``, ``nn.LeakyReLU``, ``nn.PReLU``, ``nn.RReLU``,
``nn.ELU``, ``nn.CELU``, ``nn.SELU``, ``nn.SiLU``, ``nn.Hardswish``, ``nn.GELU``
(``approximate="none"`` or ``"tanh"``), ``nn.Mish`` and ``nn.Softplus`` -> their
functional forms; in-place forms (``inplace=True``, ``torch.relu_``, ``F.elu_``, ...)
are included. ``nn.RReLU`` is deterministic in eval mode; in train mode its random
negative slope is closed by the ``"gated"`` rule anyway.
"""

SUPPORTED_ACTIVATIONS = ", ".join(_FAMILIES)
"""The activation names, for messages."""

_NO_GATE_NEEDED: frozenset[Callable[..., Any]] = frozenset(
    [*_FAMILIES["ReLU"], *_FAMILIES["ReLU6"]]
)
"""Functions whose slope is already zero wherever ``z <= 0``: the gate changes nothing."""

_HARDTANH: frozenset[Callable[..., Any]] = frozenset(_FAMILIES["Hardtanh"])


def check_guided_rule(rule: object) -> str:
    """Return ``rule`` if it names a guided rule, else a ``ValueError`` / ``TypeError``.

    Examples
    --------
    >>> check_guided_rule("ungated")
    'ungated'
    >>> check_guided_rule("relu")
    Traceback (most recent call last):
    ...
    ValueError: rule must be one of ['gated', 'ungated'], got 'relu'
    """
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a string, one of {sorted(GUIDED_RULES)}; "
                        f"got {type(rule).__name__}")
    if rule not in GUIDED_RULES:
        raise ValueError(f"rule must be one of {sorted(GUIDED_RULES)}, got {rule!r}")
    return rule


def _lookup(func: Callable[..., Any]) -> str | None:
    try:
        return GUIDED_ACTIVATIONS.get(func)
    except TypeError:  # an unhashable callable is no activation of ours
        return None


def _activation_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    return kwargs.get("input", kwargs.get("self"))


def _hardtanh_bounds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return low, high


def _classify(
    func: Callable[..., Any], family: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, bool]:
    """``(name, gate_free)``: the activation's name and whether its slope already
    vanishes for ``z <= 0`` (ReLU, ReLU6 and any Hardtanh with ``min_val >= 0``)."""
    if func in _NO_GATE_NEEDED:
        return family, True
    if func in _HARDTANH:  # nn.ReLU6 is Hardtanh(0, 6)
        low, high = _hardtanh_bounds(args, kwargs)
        if isinstance(low, (int, float)) and low >= 0:
            return ("ReLU6" if (low, high) == (0, 6) else family), True
    return family, False


class GuidedActivationSwitch:
    """Switchable guided-rule hooks on the activation outputs of one forward graph.

    Parameters
    ----------
    rule : {"gated", "ungated"}
        The guided rule (see the module notes and :data:`GUIDED_RULES`).

    Attributes
    ----------
    num_activations : int
        Activation outputs on the graph that carry a hook.
    families : dict of str to int
        How many of them each activation (``"ReLU"``, ``"GELU"``, ...) contributed.

    Examples
    --------
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> switch = GuidedActivationSwitch()
    >>> with recording_activations(switch):
    ...     y = (torch.relu(x) * torch.tensor([-1.0, 3.0])).sum()
    >>> switch.num_activations, switch.families
    (1, {'ReLU': 1})
    >>> with switch.guided():
    ...     torch.autograd.grad(y, x, retain_graph=True)[0].tolist()
    [0.0, 3.0]
    >>> torch.autograd.grad(y, x)[0].tolist()
    [-1.0, 3.0]
    """

    def __init__(self, rule: str = "gated") -> None:
        self.rule = check_guided_rule(rule)
        self.active = False
        self.statistics_held = False
        self.num_activations = 0
        self.families: dict[str, int] = {}

    def _hook(self, gate: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            if not self.active:
                return None
            positive = grad.clamp_min(0)
            return positive if gate is None else torch.where(gate, positive, 0.0)

        return hook

    def _statistics_hook(self, grad: torch.Tensor) -> torch.Tensor | None:
        return torch.zeros_like(grad) if self.statistics_held else None

    def attach_statistics(self, statistic: torch.Tensor) -> None:
        """Put the (switched-off) "hold constant" hook on a BatchNorm batch statistic."""
        if statistic.requires_grad:
            statistic.register_hook(self._statistics_hook)

    def attach(
        self,
        output: torch.Tensor,
        gate: torch.Tensor | None = None,
        family: str = "ReLU",
    ) -> None:
        """Put the (switched-off) guided hook on one activation output in the graph.

        ``gate`` is the boolean ``z > 0`` of the activation's input, recorded before the
        call, or ``None`` where the activation's slope already vanishes for ``z <= 0``
        (ReLU) or the rule has no gate.
        """
        if output.requires_grad:
            output.register_hook(self._hook(gate))
            self.num_activations += 1
            self.families[family] = self.families.get(family, 0) + 1

    @contextlib.contextmanager
    def _switched_on(self, flag: str) -> Iterator[None]:
        """Set the boolean attribute ``flag`` inside the block, and clear it after."""
        setattr(self, flag, True)
        try:
            yield
        finally:
            setattr(self, flag, False)

    def guided(self) -> contextlib.AbstractContextManager[None]:
        """Apply the guided rule in backward passes run inside this block."""
        return self._switched_on("active")

    def per_example(self) -> contextlib.AbstractContextManager[None]:
        """Hold recorded BatchNorm batch statistics constant in backward passes run inside."""
        return self._switched_on("statistics_held")


class _ActivationRecorder(TrainBatchNormCalls):
    """Hands the output of every guided activation call to a :class:`GuidedActivationSwitch`.

    With ``split_batchnorm``, train-mode BatchNorm calls on the gradient's path are
    computed from their parts, their statistics handed to the switch too.
    """

    def __init__(self, switch: GuidedActivationSwitch, split_batchnorm: bool) -> None:
        super().__init__()
        self.switch = switch
        self.intercept_batch_norm = split_batchnorm

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        if not call["input"].requires_grad:
            return super().train_batch_norm(call)
        return batch_norm_with_switchable_statistics(call, self.switch.attach_statistics)

    def other_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        family = _lookup(func)
        if family is None:
            return func(*args, **kwargs)
        family, gate_free = _classify(func, family, args, kwargs)
        gate = None
        if self.switch.rule == "gated" and not gate_free and torch.is_grad_enabled():
            z = _activation_input(args, kwargs)
            if isinstance(z, torch.Tensor) and z.requires_grad:
                gate = z.detach() > 0  # before an in-place form overwrites z
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.switch.attach(out, gate, family)
        return out


@contextlib.contextmanager
def recording_activations(
    switch: GuidedActivationSwitch, split_batchnorm: bool = False
) -> Iterator[GuidedActivationSwitch]:
    """Run a forward pass with every guided activation's output handed to ``switch``.

    The mode is popped on exit, also on an exception. With ``split_batchnorm``,
    train-mode ``F.batch_norm`` calls (``nn.BatchNorm*``) are computed from their parts
    so that ``switch.per_example()`` can hold their batch statistics constant (see
    :mod:`~captum_regularized._internal.per_example_batchnorm`).

    Examples
    --------
    >>> switch = GuidedActivationSwitch()
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> with recording_activations(switch):
    ...     _ = F.gelu(x) + torch.nn.SiLU()(x) + torch.tanh(x)
    >>> switch.families
    {'GELU': 1, 'SiLU': 1}
    """
    with _ActivationRecorder(switch, split_batchnorm):
        yield switch


def check_has_activations(switch: GuidedActivationSwitch, who: str = "forward_func") -> None:
    """Raise ``ValueError`` when a recorded forward pass met no guided activation.

    The guided gradient would silently equal the plain one.

    Examples
    --------
    >>> check_has_activations(GuidedActivationSwitch(), "model")
    Traceback (most recent call last):
    ...
    ValueError: model has no ReLU nor any other activation the guided rule knows (ReLU, \
ReLU6, Hardtanh, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU, SiLU, Hardswish, GELU, Mish, \
Softplus; as modules or functions, in-place or not) on the path from the inputs to the \
output, so the guided gradient would equal the plain one
    """
    if switch.num_activations == 0:
        raise ValueError(
            f"{who} has no ReLU nor any other activation the guided rule knows "
            f"({SUPPORTED_ACTIVATIONS}; as modules or functions, in-place or not) on the "
            "path from the inputs to the output, so the guided gradient would equal the "
            "plain one"
        )


def guided_forward(
    forward_func: Callable[..., Any],
    leaves: tuple[torch.Tensor, ...],
    additional_forward_args: tuple[Any, ...] | None,
    switch: GuidedActivationSwitch,
    *,
    split_batchnorm: bool = False,
) -> torch.Tensor:
    """One recorded forward pass (autograd on); checks that it found an activation.

    The hooks on the graph stay switched off: use ``switch.guided()`` around the
    backward pass that should follow the guided rule.

    An ``nn.DataParallel`` model runs its wrapped module, on that module's device
    (:func:`~captum_regularized._internal.model_state.unwrap_data_parallel`): the
    rule's function mode acts in this thread only and cannot follow the replicas.

    Raises
    ------
    TypeError
        When ``forward_func`` does not return a tensor.
    RuntimeError
        When it modifies one of ``leaves`` in place.
    ValueError
        When no guided activation is on the graph (:func:`check_has_activations`), or
        the model holds a TorchScript submodule (:func:`check_not_scripted`).

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1))
    >>> x = torch.rand(2, 3, requires_grad=True)
    >>> switch = GuidedActivationSwitch()
    >>> out = guided_forward(model, (x,), None, switch)
    >>> with switch.guided():
    ...     (guided,) = torch.autograd.grad(out.sum(), x)
    >>> guided.shape, switch.families
    (torch.Size([2, 3]), {'GELU': 1})
    """
    forward_func = unwrap_data_parallel(forward_func)
    check_not_scripted(find_module(forward_func), "forward_func")
    versions = [leaf._version for leaf in leaves]
    recording = recording_activations(switch, split_batchnorm=split_batchnorm)
    with torch.enable_grad(), recording:
        output = run_forward(forward_func, leaves, additional_forward_args)
    for leaf, version in zip(leaves, versions):
        check_not_modified_in_place(leaf, version, "forward_func")
    check_has_activations(switch)
    return output


_DOUBLE_BACKWARD = "compiled graphs cannot be differentiated twice (double backpropagation)"


def check_not_compiled(
    model: nn.Module | None,
    name: str = "model",
    *,
    reason: str = _DOUBLE_BACKWARD,
    also: str | None = None,
) -> None:
    """Raise ``TypeError`` for a ``torch.compile``'d module, with the way out.

    ``reason`` says why it cannot be used (by default: it cannot double-backward);
    ``also`` is a further way out appended to the message.

    Examples
    --------
    >>> check_not_compiled(nn.Linear(2, 2))
    """
    if model is None:
        return
    for module_name, module in model.named_modules():
        where = f"{name}.{module_name}" if module_name else name
        suffix = "" if also is None else f"; {also}"
        if hasattr(module, "_orig_mod"):
            raise TypeError(
                f"{where} is a torch.compile'd module; {reason}. Pass the original module "
                f"({where}._orig_mod) instead.{suffix}"
            )
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise TypeError(
                f"{where} was compiled in place (module.compile()); {reason}. Use a module "
                f"that was not compiled.{suffix}"
            )


_COMPILED_REASON = "the guided rule cannot reach the activations inside a compiled graph"


def check_not_scripted(model: nn.Module | None, name: str = "model") -> None:
    """Raise ``ValueError`` for a model holding a TorchScript (``torch.jit``) submodule.

    The guided rule sees the activations through a torch function mode; a scripted
    module runs its graph without calling back into Python, so its activations would
    keep their plain backward and the map would silently be wrong.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(2, 2), torch.jit.script(nn.ReLU()))
    >>> check_not_scripted(model)
    Traceback (most recent call last):
    ...
    ValueError: model.1 is a TorchScript module (torch.jit.script / trace); the guided rule \
cannot see the activations inside it. Use the original Python module there instead.
    """
    if model is None:
        return
    for module_name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"{name}.{module_name}" if module_name else name
            raise ValueError(
                f"{where} is a TorchScript module (torch.jit.script / trace); the guided "
                "rule cannot see the activations inside it. Use the original Python module "
                "there instead."
            )


def check_guided_model(
    forward_func: Callable[..., Any], who: str, name: str = "model"
) -> nn.Module | None:
    """The module the guided rule runs (``nn.DataParallel`` unwrapped), checked.

    The guided rule is applied by a torch function mode of the calling thread. Compiled
    graphs and TorchScript modules run without it and would silently give the plain
    gradient, so they are refused; ``nn.DataParallel`` runs its replicas in other
    threads, so :func:`guided_forward` runs the wrapped module instead.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> check_guided_model(model, "GuidedBackprop") is model
    True
    >>> check_guided_model(nn.DataParallel(model), "GuidedBackprop") is model
    True
    """
    if not callable(forward_func):
        raise TypeError(f"{name} must be callable, got {type(forward_func).__name__}")
    model = find_module(unwrap_data_parallel(forward_func))
    check_not_compiled(model, name, reason=_COMPILED_REASON)
    check_not_scripted(model, name)
    return model


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
    rule: str = "gated",
) -> GuidedAndPlain:
    """Plain and guided-backprop input gradients of the target scores from one forward pass.

    The two backward passes share the forward graph: the guided one runs with the
    activations switched to the guided rule, the plain one as autograd defines it.

    Parameters
    ----------
    forward_func : callable
        The model (or a function calling it). Its activations (any of
        :data:`GUIDED_ACTIVATIONS`) are found while it runs.
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
    rule : {"gated", "ungated"}
        The guided rule (module notes, :data:`GUIDED_RULES`); both are the classic rule
        on ReLU networks.

    Returns
    -------
    GuidedAndPlain
        ``(logits, plain, guided)``. As in Captum, the gradients are those of the *sum*
        of the target scores; in train mode BatchNorm couples the examples of a batch.

    Raises
    ------
    ValueError
        When no ReLU nor other guided activation (module or functional) is on the
        graph: the guided gradient would silently equal the plain one. Also for an
        unknown ``rule``.
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
    switch = GuidedActivationSwitch(rule)
    leaf = gradient_leaf(inputs, keep_graph=create_graph)
    with torch.enable_grad():
        logits = guided_forward(
            forward_func,
            (leaf,),
            format_additional_args(additional_forward_args),
            switch,
            split_batchnorm=per_example,
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
