"""Alignment of the plain input gradient with the guided-backprop gradient.

Torres Figueroa et al. (arXiv 2404.15024) train models whose plain gradient looks like
the guided-backprop gradient; this metric measures how far that worked: the cosine
similarity, per example, between ``dS_c/dx`` and guided backprop's ``dS_c/dx``
(both flattened over all input dims). 1 means the plain gradient already is the
guided one. Both gradients come from one forward pass
(:func:`~captum_regularized._internal.guided_relu.guided_and_plain_gradients`), and
the guided one follows the rule of :class:`~captum_regularized.attr.GuidedBackprop`
on every rectifying activation (ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU,
SiLU, Hardswish, GELU, Mish, Softplus; modules and functional forms).
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
        A network with activations the guided rule knows (modules or functional
        forms, see :data:`~captum_regularized._internal.guided_relu.GUIDED_ACTIVATIONS`);
        a module behind it runs in eval mode (restored afterwards). Not
        ``torch.compile``'d and without TorchScript submodules; an
        ``nn.DataParallel`` model runs its wrapped module, on that module's device.
    inputs : Tensor
        A batch ``(B, ...)``; not modified.
    target : int, list, Tensor, tuple, callable or None
        Any Captum target form; ``None`` means the predicted class. A target callable
        ``score(output) -> (B,)`` (pytorch-grad-cam's ``ClassifierOutputTarget(k)``), or
        a list of callables each given its example's output row, picks the score whose
        gradients are compared.
    additional_forward_args : Any
        Extra forward arguments.
    rule : {"gated", "ungated"}
        The guided rule (as in :class:`~captum_regularized.attr.GuidedBackprop`).

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
        When the model has no ReLU nor other activation the guided rule knows (the
        guided gradient would equal the plain one; the message lists them), for an
        unknown ``rule``, or when ``inputs`` hold NaN or infinite values or live on
        another device than the model.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> values = gradient_alignment(SimpleCNN(3, width=4), torch.rand(2, 3, 8, 8))
    >>> values.shape, bool((values.abs() <= 1 + 1e-6).all())
    (torch.Size([2]), True)
    >>> gelu_mlp = torch.nn.Sequential(
    ...     torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.GELU(), torch.nn.Linear(8, 3)
    ... )
    >>> gradient_alignment(gelu_mlp, torch.rand(2, 3, 2, 2), rule="ungated").shape
    torch.Size([2])
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
