"""The four signed gradient maps of Llorente et al. (arXiv 2309.12913), and all of them at once.

With ``g_c = dS_c/dx`` the input gradient of class ``c`` and ``t`` the target class:

* positive ``P = relu(g_t)``, negative ``N = relu(-g_t)``;
* active ``A = g_t`` where ``g_t > g_c`` for **every** compared ``c != t`` (strict), else 0;
* inactive ``I = g_t`` where ``g_t < g_c`` for every compared ``c != t`` (strict), else 0.

The condition "for every compared class" is vacuously true for an example that has no
compared class (a ``compare_classes`` list holding only its target): its active and
inactive maps are then ``g_t`` itself.

The functions ``*_part`` turn gradients into one map each; the attribution classes and
:func:`signed_saliency_maps` share them, so there is one formula per map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch

from captum_regularized._internal.captum_compat import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    format_output,
)
from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.class_gradients import (
    ClassGradients,
    CompareClasses,
    class_gradients,
)

__all__ = [
    "MAP_NAMES",
    "active_part",
    "inactive_part",
    "negative_part",
    "positive_part",
    "signed_saliency_maps",
]

MAP_NAMES = ("gradient", "positive", "negative", "active", "inactive")


def positive_part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``relu(g_t)`` for each input.

    Examples
    --------
    >>> positive_part((torch.tensor([-1.0, 2.0]),))[0].tolist()
    [0.0, 2.0]
    """
    return tuple(torch.relu(g) for g in gradients)


def negative_part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``relu(-g_t)`` for each input (the magnitude of the negative gradients).

    Examples
    --------
    >>> negative_part((torch.tensor([-1.0, 2.0]),))[0].tolist()
    [1.0, 0.0]
    """
    return tuple(torch.relu(-g) for g in gradients)


def _keep_where(
    gradient: torch.Tensor, keep: torch.Tensor, abs: bool
) -> torch.Tensor:
    kept = torch.where(keep, gradient, torch.zeros_like(gradient))
    return kept.abs() if abs else kept


def active_part(
    grads: ClassGradients, abs: bool = True
) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly above every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 2.0, 1.0]),), (torch.tensor([-2.0, 2.0, 3.0]),),
    ...                    (torch.tensor([-3.0, 0.0, 0.0]),))
    >>> active_part(g)[0].tolist(), active_part(g, abs=False)[0].tolist()
    ([1.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    """
    return tuple(
        _keep_where(g, g > high, abs) for g, high in zip(grads.target, grads.max_other)
    )


def inactive_part(
    grads: ClassGradients, abs: bool = True
) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly below every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 0.0]),), (torch.tensor([0.0, 1.0]),),
    ...                    (torch.tensor([0.5, 0.0]),))
    >>> inactive_part(g, abs=False)[0].tolist()
    [-1.0, 0.0]
    """
    return tuple(
        _keep_where(g, g < low, abs) for g, low in zip(grads.target, grads.min_other)
    )


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    target: TargetType = ...,
    additional_forward_args: Any = ...,
    abs: bool = ...,
    class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = ...,
    additional_forward_args: Any = ...,
    abs: bool = ...,
    class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ...,
) -> dict[str, tuple[torch.Tensor, ...]]: ...


def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: TensorOrTuple,
    target: TargetType = None,
    additional_forward_args: Any = None,
    abs: bool = True,
    class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None,
) -> dict[str, Any]:  # precise per input form in the overloads above
    """All four signed maps and the plain gradient from one pass over the class gradients.

    Equivalent to calling :class:`PositiveSaliency`, :class:`NegativeSaliency`,
    :class:`ActiveSaliency`, :class:`InactiveSaliency` (and Captum's signed
    ``Saliency(abs=False)``) on the same inputs, but the model runs forward once and the
    per-class gradients are computed once.

    Parameters
    ----------
    forward_func : callable
        Model returning ``(B, num_classes)`` scores.
    inputs : Tensor or tuple of Tensor
        Floating-point inputs, batch in dim 0.
    target : any Captum target form, optional
        ``None`` means each example's predicted class (argmax), as in the paper.
    additional_forward_args : optional
        Extra arguments passed to ``forward_func`` after the inputs.
    abs : bool
        Return ``|.|`` of the active and inactive maps (the authors' choice); ``False``
        keeps their sign.
    class_chunk_size : int, optional
        Classes back-propagated together; bounds memory to ``class_chunk_size x input``.
    compare_classes : None, int or 1-D Tensor
        ``None`` compares with every other class (exact); ``k`` with the ``k``
        highest-scoring other classes (an approximation for many classes); a tensor
        with the listed classes.

    Returns
    -------
    dict
        Keys ``"gradient"`` (signed ``g_t``), ``"positive"``, ``"negative"``,
        ``"active"``, ``"inactive"``; each value has the form and shapes of ``inputs``
        (a tensor for a tensor, a tuple for a tuple). They are computed in the model's
        own train/eval mode; the model's modes, ``requires_grad`` flags and BatchNorm
        running statistics are left as found.

    Raises
    ------
    RuntimeError
        Inside ``torch.inference_mode()``, where no gradient can be taken.
    TypeError
        For non-floating inputs, or a ``class_chunk_size`` / ``compare_classes`` of the
        wrong type.
    ValueError
        For inputs with NaN/infinite values, without a shared batch size or on another
        device than the model; an output that is not ``(B, C >= 2)``; a target or
        compared class out of range; a size that is not positive.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> maps = signed_saliency_maps(model, torch.rand(2, 3, 16, 16))
    >>> sorted(maps), maps["active"].shape
    (['active', 'gradient', 'inactive', 'negative', 'positive'], torch.Size([2, 3, 16, 16]))
    """
    check_autograd_available("signed_saliency_maps")
    formatted, was_tuple = format_inputs(inputs)
    grads = class_gradients(
        forward_func,
        formatted,
        target,
        format_additional_args(additional_forward_args),
        class_chunk_size=class_chunk_size,
        compare_classes=compare_classes,
    )
    parts = {
        "gradient": grads.target,
        "positive": positive_part(grads.target),
        "negative": negative_part(grads.target),
        "active": active_part(grads, abs),
        "inactive": inactive_part(grads, abs),
    }
    return {name: format_output(was_tuple, parts[name]) for name in MAP_NAMES}
