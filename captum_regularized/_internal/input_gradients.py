"""Per-example loss gradients with respect to the inputs.

``g_i = grad_{x_i} l(f(x_i), y_i)`` is obtained from one backward pass of the *sum*
of the per-example losses, so it is not divided by the batch size and (when the model
treats examples independently, e.g. eval-mode BatchNorm) an example's gradient does
not depend on the rest of the batch. Only the input gradient is requested from
autograd: no parameter ``.grad`` is touched and no weight gradient is computed
(unless ``create_graph=True`` asks to differentiate through it later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "InputGradient",
    "check_training_batch",
    "PerExampleLoss",
    "cross_entropy_per_example",
    "input_gradient",
    "per_example_losses",
]

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, labels) -> (B,)`` per-example losses."""


def cross_entropy_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unreduced cross-entropy, shape ``(B,)`` (the default loss).

    Examples
    --------
    >>> cross_entropy_per_example(torch.zeros(2, 4), torch.tensor([0, 3])).shape
    torch.Size([2])
    """
    return F.cross_entropy(logits, labels, reduction="none")


class InputGradient(NamedTuple):
    """Result of :func:`input_gradient`.

    Attributes
    ----------
    losses : Tensor
        Per-example losses ``(B,)`` (with a graph when ``create_graph=True``).
    logits : Tensor
        The model output.
    gradient : Tensor
        ``grad_{x_i} losses_i``, shape of the inputs.
    """

    losses: torch.Tensor
    logits: torch.Tensor
    gradient: torch.Tensor


def per_example_losses(
    loss_fn: PerExampleLoss, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Call ``loss_fn`` and check that it returned one loss per example.

    Examples
    --------
    >>> per_example_losses(lambda o, y: o.sum(), torch.zeros(2, 3), torch.zeros(2).long())
    Traceback (most recent call last):
    ...
    ValueError: loss_fn must return one loss per example, shape (2,) (reduction='none'), got ()
    """
    losses = loss_fn(logits, labels)
    if not isinstance(losses, torch.Tensor) or losses.shape != (logits.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({logits.shape[0]},) "
            f"(reduction='none'), got {shape}"
        )
    return losses


def input_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: PerExampleLoss = cross_entropy_per_example,
    *,
    create_graph: bool = False,
) -> InputGradient:
    """Per-example losses, logits and the per-example input gradient ``g``.

    Parameters
    ----------
    forward : callable
        The model (or any ``x -> logits``).
    inputs : Tensor
        Batch of inputs; not modified (a detached leaf copy is differentiated).
    labels : Tensor
        Passed to ``loss_fn``.
    loss_fn : callable
        ``loss_fn(logits, labels) -> (B,)``.
    create_graph : bool
        Keep the graph of ``g`` so a penalty on it can be back-propagated into the
        parameters (double back-propagation).

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> out = input_gradient(model, torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> out.gradient.shape, out.gradient.requires_grad
    (torch.Size([4, 3]), False)
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        losses = per_example_losses(loss_fn, logits, labels)
        (gradient,) = torch.autograd.grad(losses.sum(), x, create_graph=create_graph)
    return InputGradient(losses, logits, gradient)


def check_training_batch(inputs: object, labels: object) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a malformed ``(inputs, labels)`` batch.

    No host synchronisation: only types, dtypes and shapes are checked.

    Examples
    --------
    >>> check_training_batch(torch.zeros(2, 3), torch.zeros(3).long())
    Traceback (most recent call last):
    ...
    ValueError: labels must have one entry per example (2) in dim 0, got shape (3,)
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have a non-empty batch dim, got shape {tuple(inputs.shape)}"
        )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() < 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"labels must have one entry per example ({inputs.shape[0]}) in dim 0, "
            f"got shape {tuple(labels.shape)}"
        )
