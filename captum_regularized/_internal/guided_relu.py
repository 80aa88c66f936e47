"""The guided rule for one backward pass, on ReLU and the other rectifying activations.

For every activation ``y = sigma(z)`` of :data:`GUIDED_ACTIVATIONS` the backward pass
follows one of two rules (:data:`GUIDED_RULES`, chosen by ``rule=``):

``"gated"`` (the default)
    ``grad_in = sigma'(z) * 1[z > 0] * max(grad_out, 0)``: Springenberg et al.'s guided
    backpropagation on ReLU, so equal to ``captum.attr.GuidedBackprop`` on ReLU networks.
``"ungated"``
    ``grad_in = sigma'(z) * max(grad_out, 0)``: only the upstream gradient is rectified.

Each rule is a switched-off tensor hook on the activation's output, recorded during the
forward pass by a torch function mode that sees modules and functional forms alike;
``with switch.guided():`` turns the hooks on for one backward pass, so one forward graph
serves guided and plain gradients. Every other function keeps its ordinary backward.
Design notes: ``docs/design_notes/internals.rst``.
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
    check_floating_tensor,
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
    "GUIDED_ACTIVATIONS", "GUIDED_RULES", "RELU_FUNCTIONS", "SUPPORTED_ACTIVATIONS",
    "GuidedActivationSwitch", "GuidedAndPlain", "check_guided_model", "check_guided_rule",
    "check_has_activations", "check_not_compiled", "check_not_scripted",
    "guided_and_plain_gradients", "guided_forward", "recording_activations",
]

GUIDED_RULES: dict[str, str] = {
    "gated": "grad_in = sigma'(z) * 1[z > 0] * max(grad_out, 0)",
    "ungated": "grad_in = sigma'(z) * max(grad_out, 0)",
}
"""The guided rules by name; ``"gated"`` is the default."""

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
"""Every function the guided rule applies to (in-place forms too), mapped to its family."""

SUPPORTED_ACTIVATIONS = ", ".join(_FAMILIES)
"""The activation names, for messages."""

_NO_GATE_NEEDED = frozenset([*_FAMILIES["ReLU"], *_FAMILIES["ReLU6"]])
"""Functions whose slope is already zero wherever ``z <= 0``: the gate changes nothing."""

_HARDTANH: frozenset[Callable[..., Any]] = frozenset(_FAMILIES["Hardtanh"])


def check_guided_rule(rule: object) -> str:
    """Return ``rule`` if it names a guided rule, else a ``ValueError`` / ``TypeError``."""
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

    ``num_activations`` counts the hooked outputs, ``families`` counts them per
    activation (``"ReLU"``, ``"GELU"``, ...).

    Examples
    --------
    >>> x, switch = torch.tensor([1.0, 2.0], requires_grad=True), GuidedActivationSwitch()
    >>> with recording_activations(switch):
    ...     y = (torch.relu(x) * torch.tensor([-1.0, 3.0])).sum()
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
        self, output: torch.Tensor, gate: torch.Tensor | None = None, family: str = "ReLU"
    ) -> None:
        """Put the switched-off guided hook on one activation output (``gate``: ``z > 0``)."""
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
    """Hands every guided activation's output (and, with ``split_batchnorm``, every
    train-mode BatchNorm statistic on the gradient's path) to the switch."""

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

    With ``split_batchnorm``, ``switch.per_example()`` can hold the batch statistics of
    train-mode BatchNorm constant. The mode is popped on exit, also on an exception.

    Examples
    --------
    >>> switch = GuidedActivationSwitch()
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> with recording_activations(switch):
    ...     _ = F.gelu(x) + nn.SiLU()(x) + torch.tanh(x)
    >>> switch.families
    {'GELU': 1, 'SiLU': 1}
    """
    with _ActivationRecorder(switch, split_batchnorm):
        yield switch


def check_has_activations(switch: GuidedActivationSwitch, who: str = "forward_func") -> None:
    """Raise ``ValueError`` when a recorded forward pass met no guided activation."""
    if switch.num_activations == 0:
        raise ValueError(
            f"{who} has no ReLU nor any other activation the guided rule knows "
            f"({SUPPORTED_ACTIVATIONS}; as modules or functions, in-place or not) on the "
            "path from the inputs to the output, so the guided gradient would equal the "
            "plain one"
        )


def guided_forward(
    forward_func: Callable[..., Any], leaves: tuple[torch.Tensor, ...],
    additional_forward_args: tuple[Any, ...] | None, switch: GuidedActivationSwitch, *,
    split_batchnorm: bool = False,
) -> torch.Tensor:
    """One recorded forward pass (autograd on; ``nn.DataParallel`` runs its module).

    The hooks stay off: use ``switch.guided()`` around the guided backward pass.

    ``TypeError`` when ``forward_func`` returns no tensor, ``RuntimeError`` when it
    modifies ``leaves`` in place, ``ValueError`` with no guided activation on the graph or
    a TorchScript submodule.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1))
    >>> switch = GuidedActivationSwitch()
    >>> out = guided_forward(model, (torch.rand(2, 3, requires_grad=True),), None, switch)
    >>> out.shape, switch.families
    (torch.Size([2, 1]), {'GELU': 1})
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


def _named_modules(model: nn.Module | None, name: str) -> Iterator[tuple[str, nn.Module]]:
    """``(where, module)`` for every module of ``model``, ``where`` prefixed by ``name``."""
    for module_name, module in [] if model is None else model.named_modules():
        yield (f"{name}.{module_name}" if module_name else name), module


_DOUBLE_BACKWARD = "compiled graphs cannot be differentiated twice (double backpropagation)"


def check_not_compiled(
    model: nn.Module | None, name: str = "model", *, reason: str = _DOUBLE_BACKWARD,
    also: str | None = None,
) -> None:
    """Raise ``TypeError`` for a ``torch.compile``'d module, saying ``reason`` and ``also``."""
    suffix = "" if also is None else f"; {also}"
    for where, module in _named_modules(model, name):
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
    """Raise ``ValueError`` for a TorchScript submodule, whose activations the rule cannot see.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(2, 2), torch.jit.script(nn.ReLU()))
    >>> check_not_scripted(model)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: model.1 is a TorchScript module (torch.jit.script / trace); ...
    """
    for where, module in _named_modules(model, name):
        if isinstance(module, torch.jit.ScriptModule):
            raise ValueError(
                f"{where} is a TorchScript module (torch.jit.script / trace); the guided "
                "rule cannot see the activations inside it. Use the original Python module "
                "there instead."
            )


def check_guided_model(
    forward_func: Callable[..., Any], who: str, name: str = "model"
) -> nn.Module | None:
    """The module the guided rule runs (``nn.DataParallel`` unwrapped): not compiled nor scripted.
    """
    if not callable(forward_func):
        raise TypeError(f"{name} must be callable, got {type(forward_func).__name__}")
    model = find_module(unwrap_data_parallel(forward_func))
    check_not_compiled(model, name, reason=_COMPILED_REASON)
    check_not_scripted(model, name)
    return model


class GuidedAndPlain(NamedTuple):
    """The model output and the plain and guided gradients of the summed target scores."""

    logits: torch.Tensor
    plain: torch.Tensor
    guided: torch.Tensor


def guided_and_plain_gradients(
    forward_func: Callable[..., torch.Tensor], inputs: torch.Tensor, target: TargetType = None,
    additional_forward_args: Any = None, create_graph: bool = False, *,
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, per_example: bool = False,
    rule: str = "gated",
) -> GuidedAndPlain:
    """``(logits, plain, guided)``: input gradients of the summed target scores, one forward pass.

    ``forward_func``, ``target`` and ``additional_forward_args`` are as in
    :func:`~captum_regularized._internal.targets.target_gradients`; ``inputs`` is one
    floating batch, never modified (with ``create_graph`` and inputs on a graph, a copy on
    that graph is differentiated:
    :func:`~captum_regularized._internal.input_gradients.gradient_leaf`).
    ``create_graph`` keeps the graphs of ``plain`` and ``logits`` (else the logits come back
    detached; ``guided`` always is); ``score_fn(output) -> (B,)`` replaces ``target``;
    ``per_example`` holds train-mode BatchNorm statistics constant in both passes.
    ``ValueError``, ``TypeError`` or ``RuntimeError`` as :func:`guided_forward` raises them,
    and for an unknown ``rule``, a compiled module or non-floating inputs.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> logits, plain, guided = guided_and_plain_gradients(model, torch.rand(5, 3), target=1)
    >>> logits.shape, plain.shape, guided.shape
    (torch.Size([5, 2]), torch.Size([5, 3]), torch.Size([5, 3]))
    """
    check_floating_tensor(inputs)
    check_not_compiled(find_module(forward_func), "forward_func")
    switch = GuidedActivationSwitch(rule)
    leaf = gradient_leaf(inputs, keep_graph=create_graph)
    args = format_additional_args(additional_forward_args)
    with torch.enable_grad():
        logits = guided_forward(forward_func, (leaf,), args, switch, split_batchnorm=per_example)
        scores = target_scores(logits, target) if score_fn is None else score_fn(logits)
        guided, plain = _guided_then_plain(scores.sum(), leaf, switch, create_graph)
    if not create_graph:
        logits = logits.detach()
    return GuidedAndPlain(logits, plain, guided.detach())


def _guided_then_plain(
    total: torch.Tensor, leaf: torch.Tensor, switch: GuidedActivationSwitch, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided, then the plain gradient of ``total`` on one graph (BatchNorm held)."""
    with switch.per_example():
        with switch.guided():
            (guided,) = torch.autograd.grad(total, leaf, retain_graph=True)
        (plain,) = torch.autograd.grad(total, leaf, create_graph=create_graph)
    return guided, plain
