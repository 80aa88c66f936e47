"""The one place that touches Captum's private helpers.

Captum's ``_utils`` are not public API and move between releases. Everything this
package needs from them is wrapped here, so a Captum upgrade is fixed in one file.
Supported: ``captum>=0.8,<0.10``. Here too: the type aliases of Captum's calling
convention (``TensorOrTuple``, ``TargetType``, ``BaselineType``; ``TargetType`` adds
pytorch-grad-cam's score callables to Captum's forms), Captum's ``log_usage`` decorator
and :func:`run_forward` (which reads the logits of a ``ModelOutput`` or a dict), and
:func:`attribution_call`, the start every gradient method's ``attribute`` shares (autograd
available, Captum's input forms to tuples, the output given back in the input's form).

Users: every class of :mod:`captum_regularized.attr` (input and output forms,
additional forward arguments; baselines and repeated targets for RSI-Grad-CAM), the
metrics, the guided rule and the training losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from captum._utils.common import (
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum.attr._utils.common import _format_input_baseline, _tensorize_baseline
from captum.log import log_usage

from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.model_outputs import logits_of

TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]
ScoreTarget = Callable[[torch.Tensor], torch.Tensor]
"""A target that scores the output: ``score(output) -> (B,)`` (pytorch-grad-cam's form)."""
TargetType = (
    None
    | int
    | tuple[int, ...]
    | torch.Tensor
    | list[int]
    | list[tuple[int, ...]]
    | ScoreTarget
    | list[ScoreTarget]
    | tuple[ScoreTarget, ...]
)
BaselineType = None | torch.Tensor | int | float | tuple[torch.Tensor | int | float, ...]

__all__ = [
    "AttributionCall",
    "BaselineType",
    "ScoreTarget",
    "TargetType",
    "TensorOrTuple",
    "WithoutFutures",
    "attribution_call",
    "expand_additional_args",
    "expand_target",
    "format_additional_args",
    "format_baselines",
    "format_inputs",
    "format_output",
    "log_usage",
    "run_forward",
]


def format_inputs(inputs: TensorOrTuple) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Return ``(inputs_as_tuple, was_tuple)``; raise ``TypeError`` for anything else.

    Examples
    --------
    >>> t, was_tuple = format_inputs(torch.zeros(2, 3))
    >>> len(t), was_tuple
    (1, False)
    """
    if isinstance(inputs, torch.Tensor):
        return (inputs,), False
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return _format_tensor_into_tuples(inputs), _is_tuple(inputs)
    raise TypeError(
        "inputs must be a torch.Tensor or a non-empty tuple of tensors, "
        f"got {type(inputs).__name__}"
    )


def format_output(was_tuple: bool, output: tuple[torch.Tensor, ...]) -> TensorOrTuple:
    """Mirror the input form: a tuple in gives a tuple out, a tensor gives a tensor."""
    return _format_output(was_tuple, output)


def format_additional_args(additional_forward_args: Any) -> tuple[Any, ...] | None:
    """Captum's normalisation of ``additional_forward_args`` into a tuple (or ``None``)."""
    return _format_additional_forward_args(additional_forward_args)


class WithoutFutures:
    """Captum's ``attribute_future``, refused as Captum's ``Saliency`` refuses it.

    Captum's ``Attribution`` declares ``attribute_future`` (an asynchronous
    ``attribute`` returning a future) without defining it; its gradient methods raise
    ``NotImplementedError``. Every attribution class of the package mixes this in, so
    a caller gets that error rather than an ``AttributeError``.

    Examples
    --------
    >>> class Method(WithoutFutures):
    ...     pass
    >>> Method().attribute_future()
    Traceback (most recent call last):
    ...
    NotImplementedError: attribute_future is not implemented for Method
    """

    def attribute_future(self) -> None:
        """Not implemented: the package's methods return their maps synchronously."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")


class AttributionCall(NamedTuple):
    """The arguments of one ``attribute`` call in the forms the engines take.

    Attributes
    ----------
    inputs : tuple of Tensor
        The inputs as a tuple (one tensor becomes a 1-tuple).
    additional_forward_args : tuple or None
        Captum's normalisation of the extra forward arguments.
    was_tuple : bool
        Whether the caller passed a tuple, so that :meth:`output` mirrors it.
    """

    inputs: tuple[torch.Tensor, ...]
    additional_forward_args: tuple[Any, ...] | None
    was_tuple: bool

    def output(self, maps: tuple[torch.Tensor, ...]) -> TensorOrTuple:
        """``maps`` (one per input) in the form of the caller's ``inputs``."""
        return format_output(self.was_tuple, maps)


def attribution_call(
    who: str, inputs: TensorOrTuple, additional_forward_args: Any = None
) -> AttributionCall:
    """Start a gradient method's ``attribute``: autograd must be available, forms formatted.

    Raises ``RuntimeError`` inside ``torch.inference_mode()`` (naming ``who``) and
    ``TypeError`` for inputs that are neither a tensor nor a tuple of tensors.

    Examples
    --------
    >>> call = attribution_call("Method", torch.zeros(2, 3), 5)
    >>> len(call.inputs), call.additional_forward_args, call.output(call.inputs).shape
    (1, (5,), torch.Size([2, 3]))
    >>> type(attribution_call("Method", (torch.zeros(2, 3),)).output((torch.ones(2),)))
    <class 'tuple'>
    """
    check_autograd_available(who)
    formatted, was_tuple = format_inputs(inputs)
    return AttributionCall(formatted, format_additional_args(additional_forward_args), was_tuple)


def expand_target(target: TargetType, n: int) -> TargetType:
    """Repeat a per-example target ``n`` times along the batch (Captum's repeat order)."""
    return _expand_target(target, n)


def expand_additional_args(args: tuple[Any, ...] | None, n: int) -> tuple[Any, ...] | None:
    """Repeat per-example additional forward args ``n`` times along the batch."""
    return _expand_additional_forward_args(args, n)


def format_baselines(
    inputs: tuple[torch.Tensor, ...], baselines: BaselineType
) -> tuple[torch.Tensor, ...]:
    """Turn Captum's baseline forms into one tensor per input, broadcastable to it.

    ``None`` means zeros; a number means a constant; a tensor must either match the
    input's shape or have a batch of one with the per-example shape.

    Raises
    ------
    TypeError
        For a bool, which is no baseline (it is an argument passed in the wrong slot).
    ValueError
        When a baseline's shape fits neither form.
    """
    if isinstance(baselines, bool) or (
        isinstance(baselines, tuple) and any(isinstance(b, bool) for b in baselines)
    ):
        raise TypeError(
            "baselines must be None, a number, a tensor or a tuple of them, got a bool "
            "(Captum's LayerGradCam takes attribute_to_layer_input fourth; pass it by "
            "keyword)"
        )
    _, formatted = _format_input_baseline(inputs, baselines)
    if len(formatted) != len(inputs):
        raise ValueError(
            f"baselines must give one baseline per input tensor ({len(inputs)}), "
            f"got {len(formatted)}"
        )
    for index, (inp, base) in enumerate(zip(inputs, formatted)):
        if isinstance(base, torch.Tensor):
            same = base.shape == inp.shape
            one_for_all = base.shape[0] == 1 and base.shape[1:] == inp.shape[1:]
            if not (same or one_for_all):
                raise ValueError(
                    f"baselines[{index}] has shape {tuple(base.shape)}; expected "
                    f"{tuple(inp.shape)} or (1, *{tuple(inp.shape[1:])})"
                )
    tensors = _tensorize_baseline(inputs, formatted)
    return tuple(b.to(device=i.device, dtype=i.dtype) for b, i in zip(tensors, inputs))


def run_forward(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    additional_forward_args: tuple[Any, ...] | None = None,
) -> torch.Tensor:
    """Call ``forward_func(*inputs, *additional_forward_args)`` and return its scores tensor.

    A Hugging Face ``ModelOutput`` or a dict gives its ``logits`` tensor
    (:func:`~captum_regularized._internal.model_outputs.logits_of`); any other
    non-tensor output is a ``TypeError`` naming ``forward_func``.

    Examples
    --------
    >>> run_forward(lambda x: {"logits": 2 * x}, (torch.ones(1, 2),)).tolist()
    [[2.0, 2.0]]
    """
    args = () if additional_forward_args is None else additional_forward_args
    return logits_of(forward_func(*inputs, *args), "forward_func")
