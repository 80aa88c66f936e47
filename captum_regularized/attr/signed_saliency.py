"""Positive, negative, active and inactive saliency (Llorente et al., arXiv 2309.12913).

Plain saliency ``|dS_t/dx|`` mixes pixels that raise the target score with pixels that
lower it. The paper splits the gradient by its sign and by its attitude towards the
other classes. With ``g_c = dS_c/dx`` the input gradient of class ``c`` and ``t`` the
target class:

* positive ``P = relu(g_t)``, negative ``N = relu(-g_t)``;
* active ``A = g_t`` where ``g_t > g_c`` for every compared ``c != t`` (strict), else 0;
* inactive ``I = g_t`` where ``g_t < g_c`` for every compared ``c != t`` (strict), else 0.

Each map is one ``*_part(grads, abs)`` function, shared by its class and
:func:`signed_saliency_maps`. Maps keep the inputs' shape, as Captum's ``Saliency``'s;
:func:`~captum_regularized.attr.reduce_channels` gives the paper's per-pixel maps. Edge
cases and costs: :doc:`/design_notes/attribution_maps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch
from captum.attr import GradientAttribution

from captum_regularized._internal.captum_compat import (
    AttributionCall,
    TargetType,
    TensorOrTuple,
    WithoutFutures,
    attribution_call,
    log_usage,
)
from captum_regularized._internal.target_gradient_attribution import TargetGradientAttribution
from captum_regularized._internal.targets import target_gradients
from captum_regularized._internal.user_feedback import check_progress, warn_if_training
from captum_regularized.attr.class_gradients import (
    ClassGradients,
    CompareClasses,
    check_strategy,
    class_gradients,
)

__all__ = [
    "ActiveSaliency",
    "InactiveSaliency",
    "NegativeSaliency",
    "PositiveSaliency",
    "signed_saliency_maps",
]

MAP_NAMES = ("gradient", "positive", "negative", "active", "inactive")
"""The keys of :func:`signed_saliency_maps`."""


def positive_part(grads: ClassGradients, abs: bool = True) -> tuple[torch.Tensor, ...]:
    """``relu(g_t)`` for each input (non-negative: ``abs`` changes nothing)."""
    return tuple(torch.relu(g) for g in grads.target)


def negative_part(grads: ClassGradients, abs: bool = True) -> tuple[torch.Tensor, ...]:
    """``relu(-g_t)`` for each input (non-negative: ``abs`` changes nothing)."""
    return tuple(torch.relu(-g) for g in grads.target)


def active_part(grads: ClassGradients, abs: bool = True) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly above every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 2.0, 1.0]),), (torch.tensor([-2.0, 2.0, 3.0]),),
    ...                    (torch.tensor([-3.0, 0.0, 0.0]),))
    >>> active_part(g)[0].tolist(), active_part(g, abs=False)[0].tolist()
    ([1.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    """
    return tuple(_keep_where(g, g > high, abs) for g, high in zip(grads.target, grads.max_other))


def inactive_part(grads: ClassGradients, abs: bool = True) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly below every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 0.0]),), (torch.tensor([0.0, 1.0]),),
    ...                    (torch.tensor([0.5, 0.0]),))
    >>> inactive_part(g, abs=False)[0].tolist()
    [-1.0, 0.0]
    """
    return tuple(_keep_where(g, g < low, abs) for g, low in zip(grads.target, grads.min_other))


def _keep_where(gradient: torch.Tensor, keep: torch.Tensor, abs: bool) -> torch.Tensor:
    kept = torch.where(keep, gradient, torch.zeros_like(gradient))
    return kept.abs() if abs else kept


class _SignedSaliency(WithoutFutures, GradientAttribution):
    """One of the four maps: the subclass's ``_part`` turns the class gradients into it."""

    @staticmethod
    def _part(grads: ClassGradients, abs: bool) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class _TargetSignSaliency(TargetGradientAttribution, _SignedSaliency):
    """Positive and negative maps: only the target's gradient, Captum's three arguments."""

    def _maps(self, call: AttributionCall, target: TargetType) -> tuple[torch.Tensor, ...]:
        gradients = target_gradients(
            self.forward_func, call.inputs, target, call.additional_forward_args
        )
        return self._part(ClassGradients(gradients), abs=True)


class _ClassComparisonSaliency(_SignedSaliency):
    """Active and inactive maps: the target's gradient against the compared classes'."""

    def __init__(
        self, forward_func: Callable[..., Any], *, backward_strategy: str = "auto"
    ) -> None:
        check_strategy(backward_strategy, "backward_strategy")
        super().__init__(forward_func)
        self.backward_strategy = backward_strategy

    @log_usage()
    def attribute(
        self, inputs: TensorOrTuple, target: TargetType = None, abs: bool = True,
        additional_forward_args: Any = None, class_chunk_size: int | None = None,
        compare_classes: CompareClasses = None, progress: bool | None = None,
    ) -> TensorOrTuple:
        """Attribute ``inputs`` by comparing the target's gradient with the other classes'.

        The first four arguments are those of Captum's ``Saliency.attribute``, in order.

        Parameters
        ----------
        inputs, target, abs, additional_forward_args
            As in ``Saliency.attribute``; ``target=None`` is each example's predicted
            class, and ``abs=True`` (the authors' choice) returns ``|.|``.
        class_chunk_size : int, optional
            Classes back-propagated together (default 32); memory grows with
            ``class_chunk_size x input``, never with ``num_classes x input``.
        compare_classes : None, int or 1-D Tensor
            ``None``: every class ``c != t`` (exact). ``k``: the ``k`` highest-scoring
            other classes of each example (cheaper; can only add pixels). A tensor:
            exactly those classes.
        progress : bool or None
            A ``tqdm`` bar: ``None`` (default) when more than 64 backward passes run and
            stderr is a terminal, ``True`` always, ``False`` never.

        Returns
        -------
        Tensor or tuple of Tensor
            Maps with the form and shapes of ``inputs``; zero where the condition fails.

        Raises
        ------
        TypeError, ValueError
            For a bad argument (named in the message; ``abs`` must be a bool), non-finite
            inputs, an output that is not ``(B, C >= 2)`` or a class out of range.
        RuntimeError
            Inside ``torch.inference_mode()``.
        """
        _check_abs(abs)
        check_strategy(self.backward_strategy, "backward_strategy")
        grads, call = _class_gradients_of(
            type(self).__name__, self.forward_func, inputs, target, additional_forward_args,
            class_chunk_size, compare_classes, self.backward_strategy, progress)
        return call.output(self._part(grads, abs))


class PositiveSaliency(_TargetSignSaliency):
    """Positive gradients of the target score: ``relu(dS_t/dx)``.

    The pixels whose increase raises the target score. Unlike ``Saliency`` (which takes
    ``|.|``) the negative half is dropped, not folded in.

    Parameters
    ----------
    forward_func : callable
        The model, or any function of the inputs returning scores.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> attr = PositiveSaliency(model).attribute(torch.rand(2, 3, 16, 16), target=1)
    >>> attr.shape, bool((attr >= 0).all())
    (torch.Size([2, 3, 16, 16]), True)
    """

    _part = staticmethod(positive_part)


class NegativeSaliency(_TargetSignSaliency):
    """Magnitude of the negative gradients of the target score: ``relu(-dS_t/dx)``.

    The pixels whose increase lowers the target score.

    Parameters
    ----------
    forward_func : callable
        The model, or any function of the inputs returning scores.

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> attr = NegativeSaliency(model).attribute(torch.rand(1, 3), target=0)
    >>> torch.equal(attr[0], torch.relu(-model.weight[0]))
    True
    """

    _part = staticmethod(negative_part)


class ActiveSaliency(_ClassComparisonSaliency):
    """Target gradient where it beats the gradient of every other class (strictly).

    ``A = g_t`` where ``g_t > g_c`` for all compared ``c != t``, else 0, with
    ``g_c = dS_c/dx``. The exact map needs one backward pass per class (batched by
    ``class_chunk_size`` on CUDA); ``compare_classes=k`` compares with the ``k``
    highest-scoring other classes only. Costs: :doc:`/design_notes/attribution_maps`.

    Parameters
    ----------
    forward_func : callable
        The model, returning ``(batch, num_classes)`` scores.
    backward_strategy : {"auto", "vmap", "loop"}
        How the class chunks are back-propagated (keyword only): ``"auto"`` (default) is
        ``"vmap"`` on CUDA and ``"loop"`` elsewhere. The maps do not depend on it.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> ActiveSaliency(model).attribute(torch.rand(2, 3, 16, 16), class_chunk_size=2).shape
    torch.Size([2, 3, 16, 16])
    """

    _part = staticmethod(active_part)


class InactiveSaliency(_ClassComparisonSaliency):
    """Target gradient where it is below the gradient of every other class (strictly).

    ``I = g_t`` where ``g_t < g_c`` for all compared ``c != t``, else 0: the pixels whose
    increase favours every other class over the target. Parameters and costs are those
    of :class:`ActiveSaliency`.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]))
    >>> InactiveSaliency(model).attribute(torch.rand(1, 2), target=0, abs=False).tolist()
    [[-1.0, 0.0]]
    """

    _part = staticmethod(inactive_part)


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any], inputs: torch.Tensor, target: TargetType = ...,
    additional_forward_args: Any = ..., abs: bool = ..., class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ..., progress: bool | None = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any], inputs: tuple[torch.Tensor, ...], target: TargetType = ...,
    additional_forward_args: Any = ..., abs: bool = ..., class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ..., progress: bool | None = ...,
) -> dict[str, tuple[torch.Tensor, ...]]: ...


def signed_saliency_maps(
    forward_func: Callable[..., Any], inputs: TensorOrTuple, target: TargetType = None,
    additional_forward_args: Any = None, abs: bool = True, class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None, progress: bool | None = None,
) -> dict[str, Any]:  # precise per input form in the overloads above
    """All four signed maps and the plain gradient from one pass over the class gradients.

    The same maps as :class:`PositiveSaliency`, :class:`NegativeSaliency`,
    :class:`ActiveSaliency`, :class:`InactiveSaliency` (and Captum's
    ``Saliency(abs=False)``), with one forward pass and the class gradients taken once.
    The arguments are those of :meth:`ActiveSaliency.attribute` (``abs`` applies to the
    active and inactive maps), with ``forward_func`` first; so are the errors.

    Returns
    -------
    dict
        Keys ``"gradient"`` (signed ``g_t``), ``"positive"``, ``"negative"``,
        ``"active"``, ``"inactive"``; each value in the form and shapes of ``inputs``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> maps = signed_saliency_maps(model, torch.rand(2, 3, 16, 16))
    >>> sorted(maps), maps["active"].shape
    (['active', 'gradient', 'inactive', 'negative', 'positive'], torch.Size([2, 3, 16, 16]))
    """
    grads, call = _class_gradients_of(
        "signed_saliency_maps", forward_func, inputs, target, additional_forward_args,
        class_chunk_size, compare_classes, progress=progress)
    parts = {
        "gradient": grads.target,
        "positive": positive_part(grads, abs),
        "negative": negative_part(grads, abs),
        "active": active_part(grads, abs),
        "inactive": inactive_part(grads, abs),
    }
    return {name: call.output(parts[name]) for name in MAP_NAMES}


def _check_abs(abs: object) -> None:
    if not isinstance(abs, bool):
        raise TypeError(
            f"abs must be a bool, got {type(abs).__name__}; it is the third argument, "
            "as in Captum's Saliency.attribute(inputs, target, abs, "
            "additional_forward_args): pass additional_forward_args by keyword"
        )


def _class_gradients_of(
    who: str, forward_func: Callable[..., Any], inputs: TensorOrTuple, target: TargetType,
    additional_forward_args: Any, class_chunk_size: int | None, compare_classes: CompareClasses,
    strategy: str = "auto", progress: bool | None = None,
) -> tuple[ClassGradients, AttributionCall]:
    """The engine on Captum's input forms, after a warning about a train-mode model."""
    call = attribution_call(who, inputs, additional_forward_args)
    check_progress(progress)
    warn_if_training(forward_func, who)
    grads = class_gradients(
        forward_func, call.inputs, target, call.additional_forward_args, class_chunk_size,
        compare_classes, strategy, progress, label=who)
    return grads, call
