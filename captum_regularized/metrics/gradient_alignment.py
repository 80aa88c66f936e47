r"""Alignment of the plain input gradient with the guided-backprop gradient.

Torres Figueroa et al. (arXiv 2404.15024) train models whose plain gradient looks like
the guided one; this metric measures it, per example:

.. math::

    \cos\Big(\frac{\partial S_c}{\partial x},\;
    \frac{\partial^{\text{guided}} S_c}{\partial x}\Big) \in [-1, 1],

both flattened, from one forward pass, the guided rule that of
:class:`~captum_regularized.attr.GuidedBackprop` (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.checks import (
    check_attribution_inputs,
    check_autograd_available,
)
from captum_regularized._internal.guided_relu import (
    check_guided_model,
    check_guided_rule,
    guided_and_plain_gradients,
)
from captum_regularized._internal.model_state import preserved_model
from captum_regularized.metrics._ratio import ratio_or_zero

__all__ = ["gradient_alignment"]


def gradient_alignment(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    target: TargetType = None,
    *,
    additional_forward_args: Any = None,
    rule: str = "gated",
) -> torch.Tensor:
    """Cosine similarity of the plain and guided input gradients, shape ``(B,)``.

    Parameters
    ----------
    forward_func : callable
        A network with activations the guided rule knows; run in eval mode (restored).
    inputs : Tensor
        A batch ``(B, ...)``; not modified.
    target : int, list, Tensor, tuple, callable or None
        Any Captum target form (or score callables); ``None`` means the predicted class.
    additional_forward_args : Any
        Extra forward arguments.
    rule : {"gated", "ungated"}
        The guided rule (as in :class:`~captum_regularized.attr.GuidedBackprop`).

    Returns
    -------
    Tensor
        ``(B,)`` in ``[-1, 1]``; 0 where either gradient is exactly zero.

    Raises
    ------
    TypeError, ValueError
        For inputs, a ``rule`` or a model without guided activations (the message
        lists them).
    RuntimeError
        Inside ``torch.inference_mode()``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> values = gradient_alignment(SimpleCNN(3, width=4), torch.rand(2, 3, 8, 8))
    >>> values.shape, bool((values.abs() <= 1 + 1e-6).all())
    (torch.Size([2]), True)
    """
    check_autograd_available("gradient_alignment")
    check_guided_rule(rule)
    model = check_guided_model(forward_func, "gradient_alignment", "forward_func")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    batch = check_attribution_inputs((inputs,), model)
    if batch == 0:
        return torch.zeros(0, device=inputs.device)
    with preserved_model(model, eval_mode=True):
        _, plain, guided = guided_and_plain_gradients(
            forward_func, inputs, target, additional_forward_args, rule=rule
        )
    plain = plain.detach().reshape(batch, -1).float()
    guided = guided.reshape(batch, -1).float()
    return ratio_or_zero((plain * guided).sum(dim=1), plain.norm(dim=1) * guided.norm(dim=1))
