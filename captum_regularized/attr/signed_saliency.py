"""Positive, negative, active and inactive saliency (Llorente et al., arXiv 2309.12913).

Plain saliency shows ``|dS_t/dx|`` and so mixes pixels that raise the target score with
pixels that lower it. The paper splits the gradient by its *sign* (positive / negative)
and by its *attitude* towards the other classes: a pixel is **active** when increasing
it raises the target score faster than any other class's score (``g_t > g_c`` for every
``c != t``), **inactive** when it raises every other class faster (``g_t < g_c``).

All four classes return attributions of the input's shape (tuple in, tuple out), so
``NoiseTunnel``, ``captum.attr.visualization`` and ``captum.metrics`` take them as they
take ``Saliency``. Use :func:`~captum_regularized.attr.reduce_channels` and
:func:`~captum_regularized.attr.normalize_per_example` to get the paper's per-pixel
maps, and :func:`~captum_regularized.attr.signed_saliency_maps` for all four at once.

The model is left as found: the forward pass runs in its own train/eval mode, and a
training model's BatchNorm running statistics are written back afterwards (also when
``NoiseTunnel`` calls ``attribute`` once per noisy sample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution

from captum_regularized._internal.captum_compat import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    format_output,
    log_usage,
)
from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.class_gradients import (
    ClassGradients,
    CompareClasses,
    class_gradients,
    target_gradients,
)
from captum_regularized.attr.signed_maps import (
    active_part,
    inactive_part,
    negative_part,
    positive_part,
)

__all__ = ["ActiveSaliency", "InactiveSaliency", "NegativeSaliency", "PositiveSaliency"]


class _SignedSaliency(GradientAttribution):
    """Shared base: Captum's gradient-attribution contract for the four signed maps."""

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        """``False``: the maps are gradients, not gradient x input."""
        return False

    def has_convergence_delta(self) -> bool:
        """``False``: no completeness property to report."""
        return False


class _TargetSignSaliency(_SignedSaliency):
    """Maps that need only the target's gradient (one forward, one backward)."""

    @staticmethod
    def _part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The map of one subclass, from the target's gradients (set by each subclass)."""
        raise NotImplementedError

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        """Attribute ``inputs`` to each example's target score.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs, batch in dim 0.
        target : any Captum target form, optional
            ``None`` means the predicted class on a ``(B, C>1)`` output and the output
            itself on a per-example scalar output.
        additional_forward_args : optional
            Extra arguments passed to the model after the inputs.

        Returns
        -------
        Tensor or tuple of Tensor
            Non-negative maps with the form and shapes of ``inputs``.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``, where no gradient can be taken.
        TypeError
            For non-floating inputs.
        ValueError
            For inputs with NaN/infinite values, without a shared batch size or on
            another device than the model, and for a target out of range.
        """
        check_autograd_available(type(self).__name__)
        formatted, was_tuple = format_inputs(inputs)
        gradients = target_gradients(
            self.forward_func, formatted, target, format_additional_args(additional_forward_args)
        )
        return format_output(was_tuple, self._part(gradients))


class _ClassComparisonSaliency(_SignedSaliency):
    """Maps that compare the target's gradient with every other class's gradient."""

    @staticmethod
    def _part(
        grads: ClassGradients, abs: bool = True  # the paper's and Captum's Saliency name
    ) -> tuple[torch.Tensor, ...]:
        """The map of one subclass, from the class gradients (set by each subclass)."""
        raise NotImplementedError

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        abs: bool = True,
        class_chunk_size: int | None = None,
        compare_classes: CompareClasses = None,
    ) -> TensorOrTuple:
        """Attribute ``inputs`` by comparing the target's gradient with the other classes'.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs, batch in dim 0.
        target : any Captum target form, optional
            ``None`` means each example's predicted class (argmax), as in the paper.
            The model must return ``(B, num_classes)`` scores with ``num_classes >= 2``.
        additional_forward_args : optional
            Extra arguments passed to the model after the inputs.
        abs : bool
            Return ``|.|`` (default, as the authors do); ``False`` keeps the sign.
        class_chunk_size : int, optional
            Classes back-propagated together (default 32): peak memory grows with
            ``class_chunk_size x input``, never with ``num_classes x input``.
        compare_classes : None, int or 1-D Tensor
            ``None``: every class ``c != t`` (exact). ``k``: only the ``k``
            highest-scoring other classes of each example, a cheaper approximation for
            models with many classes. A 1-D tensor: exactly those classes.

        Returns
        -------
        Tensor or tuple of Tensor
            Maps with the form and shapes of ``inputs``; zero where the condition fails.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``, where no gradient can be taken.
        TypeError
            For non-floating inputs, or a ``class_chunk_size`` / ``compare_classes`` of
            the wrong type.
        ValueError
            For inputs with NaN/infinite values, without a shared batch size or on
            another device than the model; an output that is not ``(B, C >= 2)``; a
            target or compared class out of range; a size that is not positive.
        """
        check_autograd_available(type(self).__name__)
        formatted, was_tuple = format_inputs(inputs)
        grads = class_gradients(
            self.forward_func,
            formatted,
            target,
            format_additional_args(additional_forward_args),
            class_chunk_size=class_chunk_size,
            compare_classes=compare_classes,
        )
        return format_output(was_tuple, self._part(grads, abs))


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

    ``A = g_t`` where ``g_t > g_c`` for all ``c != t``, else 0, with ``g_c = dS_c/dx``.
    The class gradients come from one forward pass and batched backward passes over
    class chunks, with running maxima: memory does not grow with the number of classes.

    Parameters
    ----------
    forward_func : callable
        The model, returning ``(batch, num_classes)`` scores.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> attr = ActiveSaliency(model).attribute(x, class_chunk_size=2)
    >>> attr.shape
    torch.Size([2, 3, 16, 16])
    >>> signed = ActiveSaliency(model).attribute(x, abs=False)
    >>> torch.allclose(signed.abs(), attr)
    True
    """

    _part = staticmethod(active_part)


class InactiveSaliency(_ClassComparisonSaliency):
    """Target gradient where it is below the gradient of every other class (strictly).

    ``I = g_t`` where ``g_t < g_c`` for all ``c != t``, else 0: the pixels whose
    increase favours every other class over the target.

    Parameters
    ----------
    forward_func : callable
        The model, returning ``(batch, num_classes)`` scores.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]))
    >>> InactiveSaliency(model).attribute(torch.rand(1, 2), target=0, abs=False).tolist()
    [[-1.0, 0.0]]
    """

    _part = staticmethod(inactive_part)
