"""The one place that touches Captum's private helpers (``captum>=0.8,<0.10``).

Captum's ``_utils`` move between releases, so everything taken from them is wrapped
here, next to the type aliases of Captum's calling convention (``TargetType`` adds
pytorch-grad-cam's score callables), ``log_usage``, :func:`run_forward` (which reads the
logits of a ``ModelOutput`` or dict) and :func:`attribution_call`, the start every
gradient method's ``attribute`` shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from captum._utils.common import (
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
    None | int | tuple[int, ...] | torch.Tensor | list[int] | list[tuple[int, ...]]
    | ScoreTarget | list[ScoreTarget] | tuple[ScoreTarget, ...]
)
BaselineType = None | torch.Tensor | int | float | tuple[torch.Tensor | int | float, ...]

__all__ = [
    "AttributionCall", "BaselineType", "ScoreTarget", "TargetType", "TensorOrTuple",
    "WithoutFutures", "attribution_call", "expand_target", "format_additional_args",
    "format_baselines", "format_inputs", "log_usage", "run_forward",
]


def format_inputs(inputs: TensorOrTuple) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Return ``(inputs_as_tuple, was_tuple)``; raise ``TypeError`` for anything else."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), False
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return _format_tensor_into_tuples(inputs), _is_tuple(inputs)
    raise TypeError(
        "inputs must be a torch.Tensor or a non-empty tuple of tensors, "
        f"got {type(inputs).__name__}"
    )


def format_additional_args(additional_forward_args: Any) -> tuple[Any, ...] | None:
    """Captum's normalisation of ``additional_forward_args`` into a tuple (or ``None``)."""
    return _format_additional_forward_args(additional_forward_args)


class WithoutFutures:
    """Captum's ``attribute_future``, refused with ``NotImplementedError`` as ``Saliency`` does."""

    def attribute_future(self) -> None:
        """Not implemented: the package's methods return their maps synchronously."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")


class AttributionCall(NamedTuple):
    """One ``attribute`` call's inputs (as a tuple) and extra arguments, Captum-normalised."""

    inputs: tuple[torch.Tensor, ...]
    additional_forward_args: tuple[Any, ...] | None
    was_tuple: bool

    def output(self, maps: tuple[torch.Tensor, ...]) -> TensorOrTuple:
        """``maps`` (one per input) in the form of the caller's ``inputs``."""
        return _format_output(self.was_tuple, maps)


def attribution_call(
    who: str, inputs: TensorOrTuple, additional_forward_args: Any = None
) -> AttributionCall:
    """Start a gradient method's ``attribute``: autograd available (else ``RuntimeError``
    naming ``who``), inputs a tensor or a tuple of tensors (else ``TypeError``).

    Examples
    --------
    >>> call = attribution_call("Method", torch.zeros(2, 3), 5)
    >>> len(call.inputs), call.additional_forward_args, call.output(call.inputs).shape
    (1, (5,), torch.Size([2, 3]))
    """
    check_autograd_available(who)
    formatted, was_tuple = format_inputs(inputs)
    return AttributionCall(formatted, format_additional_args(additional_forward_args), was_tuple)


def expand_target(target: TargetType, n: int) -> TargetType:
    """Repeat a per-example target ``n`` times along the batch (Captum's repeat order)."""
    return _expand_target(target, n)


def format_baselines(
    inputs: tuple[torch.Tensor, ...], baselines: BaselineType
) -> tuple[torch.Tensor, ...]:
    """Captum's baseline forms as one tensor per input: the input's shape or a batch of one.

    ``None`` means zeros, a number a constant. A bool (an argument in the wrong slot) is
    a ``TypeError``, a shape of neither form a ``ValueError``.
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
    """``forward_func(*inputs, *additional_forward_args)`` as a scores tensor (:func:`logits_of`).
    """
    args = () if additional_forward_args is None else additional_forward_args
    return logits_of(forward_func(*inputs, *args), "forward_func")
