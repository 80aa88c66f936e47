"""Per-example loss gradients with respect to the inputs, and the training-batch checks.

``g_i = grad_{x_i} l(f(x_i), y_i)`` comes from one backward pass of the *sum* of the
per-example losses: not divided by the batch size, and no parameter ``.grad`` touched.
With ``create_graph=True`` the caller's graph is kept (:func:`gradient_leaf`), so a
penalty on ``g`` back-propagates into the modules that produced the inputs too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized._internal.checks import check_inputs_fit_model
from captum_regularized._internal.model_outputs import logits_of

__all__ = [
    "InputGradient", "PerExampleLoss", "check_class_logits", "check_floating_tensor",
    "check_not_modified_in_place", "check_training_batch", "cross_entropy_per_example",
    "fresh_leaf", "gradient_leaf", "input_gradient", "leaf_in_place_error_explained",
    "per_example_losses",
]

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, labels) -> (B,)`` per-example losses."""


def cross_entropy_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unreduced cross-entropy ``(B,)`` after :func:`check_class_logits` (the default loss)."""
    check_class_logits(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


class InputGradient(NamedTuple):
    """Per-example losses ``(B,)``, the logits, and ``grad_{x_i} losses_i``."""

    losses: torch.Tensor
    logits: torch.Tensor
    gradient: torch.Tensor


def per_example_losses(
    loss_fn: PerExampleLoss, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Call ``loss_fn`` and check that it returned one loss per example."""
    losses = loss_fn(logits, labels)
    if not isinstance(losses, torch.Tensor) or losses.shape != (logits.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({logits.shape[0]},) "
            f"(reduction='none'), got {shape}"
        )
    return losses


def gradient_leaf(inputs: torch.Tensor, keep_graph: bool) -> torch.Tensor:
    """The tensor to differentiate in place of ``inputs``, which stay untouched.

    With ``keep_graph`` and inputs that require grad, a copy still on their graph;
    otherwise :func:`fresh_leaf`.
    """
    if keep_graph and inputs.requires_grad:
        return inputs.clone()
    return fresh_leaf(inputs)


def fresh_leaf(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf that requires grad, sharing ``inputs``' storage (copied if an inference tensor)."""
    leaf = inputs.clone() if inputs.is_inference() else inputs.detach()
    return leaf.requires_grad_(True)


def check_not_modified_in_place(leaf: torch.Tensor, version: int, who: str = "model") -> None:
    """Raise ``RuntimeError`` when the forward pass wrote into the tensor it was given."""
    if leaf._version != version:
        raise RuntimeError(_in_place_message(who))


def _in_place_message(who: str) -> str:
    return (
        f"{who} modified its input in place (e.g. x.sub_(...) or an in-place activation "
        "on the input); the input gradient would be that of the modified tensor. Make "
        "the first operation out of place"
    )


def input_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor,
    loss_fn: PerExampleLoss = cross_entropy_per_example, *, create_graph: bool = False,
) -> InputGradient:
    """Per-example losses ``loss_fn(forward(x), labels)``, logits and input gradient ``g``.

    ``create_graph=True`` keeps the graph of ``g`` (double back-propagation) and of
    ``inputs``. Raises ``RuntimeError`` when ``forward`` modifies its input in place.

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> out = input_gradient(model, torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> out.gradient.shape, out.gradient.requires_grad
    (torch.Size([4, 3]), False)
    """
    x = gradient_leaf(inputs, keep_graph=create_graph)
    version = x._version
    with torch.enable_grad():
        logits = logits_of(forward(x), "model")
        check_not_modified_in_place(x, version)
        losses = per_example_losses(loss_fn, logits, labels)
        (gradient,) = torch.autograd.grad(losses.sum(), x, create_graph=create_graph)
    return InputGradient(losses, logits, gradient)


def check_training_batch(
    inputs: object, labels: object, *, class_indices: bool = False, model: nn.Module | None = None
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a malformed ``(inputs, labels)`` batch.

    ``inputs`` a floating batch ``(B, ...)`` that fits ``model``
    (:func:`~captum_regularized._internal.checks.check_inputs_fit_model`), ``labels`` one
    entry per example; with ``class_indices``, a 1-D integer tensor of cross-entropy
    classes (``ignore_index=-100`` is refused). Then, in one host synchronisation, finite
    inputs and (on a GPU) no negative class; CPU labels are range-checked by
    :func:`check_class_logits`.

    Examples
    --------
    >>> check_training_batch(torch.zeros(2, 3), torch.zeros(3).long())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: labels must have one entry per example in dim 0: inputs have 2 examples ...
    """
    inputs = _checked_inputs(inputs)
    check_inputs_fit_model((inputs,), model)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() < 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(_label_count_message(inputs, labels))
    if class_indices:
        _check_class_index_labels(labels, inputs.shape[0])
    _check_values(inputs, labels, class_indices)


def check_floating_tensor(inputs: object) -> torch.Tensor:
    """``inputs`` if it is a floating-point tensor, else a ``TypeError``."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")
    return inputs


def _checked_inputs(inputs: object) -> torch.Tensor:
    inputs = check_floating_tensor(inputs)
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must have a non-empty batch dim, got shape {tuple(inputs.shape)}")
    return inputs


def _check_class_index_labels(labels: torch.Tensor, batch: int) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"labels must be an integer tensor of class indices, got {labels.dtype} "
            "(pass a loss_fn for soft or other targets where one is accepted)"
        )
    if labels.dim() != 1:
        raise ValueError(
            f"labels must be a 1-D tensor of class indices, shape ({batch},), "
            f"got shape {tuple(labels.shape)}"
        )


def _check_values(inputs: torch.Tensor, labels: torch.Tensor, class_indices: bool) -> None:
    """Finite inputs and (GPU class indices) non-negative labels, in one synchronisation."""
    finite = torch.isfinite(inputs).all()
    ok = finite
    if class_indices and labels.device.type != "cpu":
        ok = finite & (labels >= 0).all().to(finite.device)
    if not bool(ok):
        if not bool(finite):
            raise ValueError("inputs contains NaN or infinite values")
        _raise_label_range(labels, None)


def _label_count_message(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """Say how many examples the inputs and the labels have (and the likely fix)."""
    count = "none (a 0-d tensor)" if labels.dim() < 1 else str(labels.shape[0])
    message = (
        f"labels must have one entry per example in dim 0: inputs have {inputs.shape[0]} "
        f"examples (shape {tuple(inputs.shape)}), labels have {count} "
        f"(shape {tuple(labels.shape)})"
    )
    if inputs.dim() == 3 and labels.numel() == 1:
        message += (
            "; if inputs is one (C, H, W) image, add its batch dimension: "
            "inputs.unsqueeze(0)"
        )
    return message


def _raise_label_range(labels: torch.Tensor, num_classes: int | None) -> None:
    low = int(labels.min())
    high = int(labels.max())
    classes = "[0, C - 1]" if num_classes is None else f"[0, {num_classes - 1}]"
    known = "" if num_classes is None else f" (the model has {num_classes} logits)"
    bad = low if low < 0 else high
    hint = (
        "; ignore_index is not supported: drop those examples from the batch"
        if bad == -100
        else ""
    )
    raise ValueError(f"labels must be class indices in {classes}{known}, got {bad}{hint}")


def check_class_logits(logits: object, labels: torch.Tensor) -> None:
    """Logits must be ``(B, C)``; CPU labels are range-checked against ``C``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (batch, classes), got {shape}")
    num_classes = logits.shape[1]
    on_cpu = labels.device.type == "cpu" and labels.numel() > 0
    if on_cpu and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        _raise_label_range(labels, num_classes)


@contextlib.contextmanager
def leaf_in_place_error_explained(who: str = "model") -> Iterator[None]:
    """Turn autograd's "leaf Variable ... in-place" error into the in-place input message."""
    try:
        yield
    except RuntimeError as error:
        if "leaf Variable that requires grad" not in str(error):
            raise
        raise RuntimeError(_in_place_message(who)) from error
