"""Alignment of the plain input gradient with the guided-backprop gradient.

Torres Figueroa et al. (arXiv 2404.15024) train models whose plain gradient looks like
the guided-backprop gradient; this metric measures how far that worked: the cosine
similarity, per example, between ``dS_c/dx`` and guided backprop's ``dS_c/dx``
(both flattened over all input dims). 1 means the plain gradient already is the
guided one. Both gradients come from one forward pass
(:func:`~captum_regularized._internal.guided_relu.guided_and_plain_gradients`).
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
from captum_regularized._internal.guided_relu import guided_and_plain_gradients
from captum_regularized._internal.model_state import find_module, preserved_model

__all__ = ["gradient_alignment"]


def gradient_alignment(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    target: TargetType = None,
    *,
    additional_forward_args: Any = None,
) -> torch.Tensor:
    """Cosine similarity of the plain and guided input gradients, shape ``(B,)``.

    Parameters
    ----------
    forward_func : callable
        A ReLU network (``nn.ReLU`` modules or functional ReLUs); a module behind it
        runs in eval mode (restored afterwards).
    inputs : Tensor
        A batch ``(B, ...)``; not modified.
    target : int, list, Tensor, tuple or None
        Any Captum target form; ``None`` means the predicted class.
    additional_forward_args : Any
        Extra forward arguments.

    Returns
    -------
    Tensor
        ``(B,)`` in ``[-1, 1]``; 0 for an example whose plain or guided gradient is
        exactly zero (no direction to compare).

    Raises
    ------
    RuntimeError
        Inside ``torch.inference_mode()`` (gradients cannot be taken there).
    TypeError
        When ``inputs`` is not a floating-point tensor.
    ValueError
        When the model has no ReLU (the guided gradient would equal the plain one), or
        ``inputs`` hold NaN or infinite values or live on another device than the model.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> values = gradient_alignment(SimpleCNN(3, width=4), torch.rand(2, 3, 8, 8))
    >>> values.shape, bool((values.abs() <= 1 + 1e-6).all())
    (torch.Size([2]), True)
    """
    check_autograd_available("gradient_alignment")
    model = find_module(forward_func)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    batch = check_attribution_inputs((inputs,), model)
    if batch == 0:
        return torch.zeros(0, device=inputs.device)
    with preserved_model(model, eval_mode=True):
        _, plain, guided = guided_and_plain_gradients(
            forward_func, inputs, target, additional_forward_args
        )
    plain = plain.detach().reshape(batch, -1).float()
    guided = guided.reshape(batch, -1).float()
    norms = plain.norm(dim=1) * guided.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, (plain * guided).sum(dim=1) / safe, torch.zeros_like(norms))
