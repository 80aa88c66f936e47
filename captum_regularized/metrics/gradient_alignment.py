r"""Alignment of the plain input gradient with the guided-backprop gradient.

Torres Figueroa et al. (arXiv 2404.15024) train models whose plain gradient looks like
the guided one; this metric measures it, per example, as
:math:`\cos(\partial S_c / \partial x, \partial^{\text{guided}} S_c / \partial x) \in [-1, 1]`,
both flattened, from one forward pass (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.checks import check_attribution_inputs, check_autograd_available
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

    ``forward_func`` is a network with activations the guided rule ``rule`` of
    :class:`~captum_regularized.attr.GuidedBackprop` knows (run in eval mode); ``inputs``
    a batch ``(B, ...)``; ``target`` and ``additional_forward_args`` as in
    :func:`~captum_regularized.metrics.deletion_curve`. 0 where either gradient is zero.

    Raises
    ------
    TypeError, ValueError
        For inputs, a ``rule`` or a model without guided activations.
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
