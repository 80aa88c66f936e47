"""The base of the attribution methods whose maps come from the target's input gradient.

:class:`~captum_regularized.attr.GuidedBackprop`,
:class:`~captum_regularized.attr.PositiveSaliency` and
:class:`~captum_regularized.attr.NegativeSaliency` take Captum's three arguments, run
one forward and one backward pass of the target's score, and differ only in how that
backward pass runs and what they make of the gradient: each writes :meth:`_maps`.
"""

from __future__ import annotations

from typing import Any

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
from captum_regularized._internal.user_feedback import warn_if_training

__all__ = ["TargetGradientAttribution"]


class TargetGradientAttribution(WithoutFutures, GradientAttribution):
    """A Captum gradient method whose map is computed from the target's input gradient.

    Subclasses implement :meth:`_maps`. Captum's defaults hold: ``multiplies_by_inputs``
    and ``has_convergence_delta`` are ``False``.

    Examples
    --------
    >>> class Gradient(TargetGradientAttribution):
    ...     def _maps(self, call, target):
    ...         from captum_regularized._internal.targets import target_gradients
    ...         return target_gradients(
    ...             self.forward_func, call.inputs, target, call.additional_forward_args)
    >>> model = torch.nn.Linear(3, 2)
    >>> torch.equal(Gradient(model).attribute(torch.rand(4, 3), target=1)[0], model.weight[1])
    True
    """

    def _maps(self, call: AttributionCall, target: TargetType) -> tuple[torch.Tensor, ...]:
        """One map per input of ``call`` (the subclass's method)."""
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
            Floating-point inputs, batch in dim 0; not modified.
        target : any Captum target form or target callable, optional
            ``None`` means the predicted class on a ``(B, C > 1)`` output and the output
            itself on a per-example scalar output; a callable ``score(output) -> (B,)``
            (``ClassifierOutputTarget(k)``) is differentiated as it is.
        additional_forward_args : optional
            Extra arguments passed to the model after the inputs.

        Returns
        -------
        Tensor or tuple of Tensor
            The maps, with the form, shapes and dtypes of ``inputs``.

        Raises
        ------
        ValueError, TypeError
            For non-floating or non-finite inputs, inputs without a shared batch size or
            on another device; a target out of range; for ``GuidedBackprop``, a model
            with no activation the guided rule knows.
        RuntimeError
            Inside ``torch.inference_mode()``; when the model modifies its input in place.
        """
        call = attribution_call(type(self).__name__, inputs, additional_forward_args)
        warn_if_training(self.forward_func, type(self).__name__)
        return call.output(self._maps(call, target))
