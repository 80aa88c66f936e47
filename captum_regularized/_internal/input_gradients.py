"""Per-example loss gradients with respect to the inputs.

``g_i = grad_{x_i} l(f(x_i), y_i)`` is obtained from one backward pass of the *sum*
of the per-example losses, so it is not divided by the batch size and (when the model
treats examples independently, e.g. eval-mode BatchNorm) an example's gradient does
not depend on the rest of the batch. Only the input gradient is requested from
autograd: no parameter ``.grad`` is touched and no weight gradient is computed
(unless ``create_graph=True`` asks to differentiate through it later).

With ``create_graph=True`` the caller's autograd graph is kept: when ``inputs`` come
out of trainable modules (``reg(pre(x), y)``), the gradient is taken with respect to a
copy that still hangs on that graph, so the logits *and* the penalty on the gradient
back-propagate into ``pre`` as they would through the composed model.

Users: the guided rule (:mod:`~captum_regularized._internal.guided_relu`: the
gradient leaf and the in-place check) and the three training losses (everything; the
checks of a training batch, :func:`check_training_batch` and
:func:`check_class_logits`, are theirs).

The two penalties' modes (double back-propagation, finite differences) live with them,
in :mod:`captum_regularized.regularizers._penalty_modes`.
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
    "InputGradient",
    "PerExampleLoss",
    "check_class_logits",
    "check_not_modified_in_place",
    "check_training_batch",
    "cross_entropy_per_example",
    "fresh_leaf",
    "gradient_leaf",
    "input_gradient",
    "leaf_in_place_error_explained",
    "per_example_losses",
]

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, labels) -> (B,)`` per-example losses."""


def cross_entropy_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unreduced cross-entropy, shape ``(B,)`` (the default loss).

    The logits must be ``(B, C)`` and the labels class indices in ``[0, C - 1]``
    (:func:`check_class_logits`); ``ignore_index`` (``-100``) is refused rather than
    silently counted as a zero loss.

    Examples
    --------
    >>> cross_entropy_per_example(torch.zeros(2, 4), torch.tensor([0, 3])).shape
    torch.Size([2])
    """
    check_class_logits(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


class InputGradient(NamedTuple):
    """Result of :func:`input_gradient`.

    Attributes
    ----------
    losses : Tensor
        Per-example losses ``(B,)`` (with a graph when ``create_graph=True``).
    logits : Tensor
        The model's class scores (the logits of a ``ModelOutput`` or dict).
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


def gradient_leaf(inputs: torch.Tensor, keep_graph: bool) -> torch.Tensor:
    """The tensor to differentiate with respect to in place of ``inputs``.

    ``keep_graph`` with ``inputs`` on an autograd graph (they require grad): a copy
    still connected to that graph, so that whatever is computed from it (logits, a
    penalty on a ``create_graph=True`` gradient) back-propagates into the modules that
    produced ``inputs``. Otherwise a detached leaf sharing ``inputs``' storage (no copy,
    and the caller's graph is not touched). ``inputs`` themselves are never modified.

    Examples
    --------
    >>> pre = torch.nn.Linear(2, 2)
    >>> z = pre(torch.rand(3, 2))
    >>> gradient_leaf(z, keep_graph=True).grad_fn is not None
    True
    >>> gradient_leaf(z, keep_graph=False).is_leaf
    True
    """
    if keep_graph and inputs.requires_grad:
        return inputs.clone()
    return fresh_leaf(inputs)


def fresh_leaf(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf that requires grad, with the values of ``inputs`` (which stay untouched).

    Shares ``inputs``' storage where it can (``detach``). A tensor created under
    ``torch.inference_mode()`` (a common way to load data) can never require grad, so
    it is copied once instead; call this outside inference mode.

    Examples
    --------
    >>> x = torch.rand(2, 3)
    >>> leaf = fresh_leaf(x)
    >>> leaf.requires_grad, leaf.data_ptr() == x.data_ptr(), x.requires_grad
    (True, True, False)
    >>> with torch.inference_mode():
    ...     loaded = torch.rand(2, 3)
    >>> fresh_leaf(loaded).requires_grad
    True
    """
    leaf = inputs.clone() if inputs.is_inference() else inputs.detach()
    return leaf.requires_grad_(True)


def check_not_modified_in_place(leaf: torch.Tensor, version: int, who: str = "model") -> None:
    """Raise ``RuntimeError`` when the forward pass wrote into the tensor it was given.

    The gradient would then be that of the modified tensor, not of the input.

    Examples
    --------
    >>> x = torch.zeros(2)
    >>> version = x._version
    >>> _ = x.add_(1)
    >>> check_not_modified_in_place(x, version)
    Traceback (most recent call last):
    ...
    RuntimeError: model modified its input in place (e.g. x.sub_(...) or an in-place \
activation on the input); the input gradient would be that of the modified tensor. \
Make the first operation out of place
    """
    if leaf._version != version:
        raise RuntimeError(_in_place_message(who))


def _in_place_message(who: str) -> str:
    return (
        f"{who} modified its input in place (e.g. x.sub_(...) or an in-place activation "
        "on the input); the input gradient would be that of the modified tensor. Make "
        "the first operation out of place"
    )


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
        The model (or any ``x -> logits``); a ``ModelOutput`` or dict gives its
        ``"logits"`` (see :func:`~captum_regularized._internal.model_outputs.logits_of`).
    inputs : Tensor
        Batch of inputs; not modified. With ``create_graph=True`` and inputs that
        require grad, the caller's graph is kept (see :func:`gradient_leaf`);
        otherwise a detached leaf is differentiated.
    labels : Tensor
        Passed to ``loss_fn``.
    loss_fn : callable
        ``loss_fn(logits, labels) -> (B,)``.
    create_graph : bool
        Keep the graph of ``g`` so a penalty on it can be back-propagated into the
        parameters (double back-propagation), and the graph of ``inputs``.

    Raises
    ------
    RuntimeError
        When ``forward`` modifies its input in place.

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
    inputs: object,
    labels: object,
    *,
    class_indices: bool = False,
    model: nn.Module | None = None,
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a malformed ``(inputs, labels)`` batch.

    Call it before any forward pass. Types, dtypes and shapes are checked first (with
    ``model``, also whether the inputs fit it:
    :func:`~captum_regularized._internal.checks.check_inputs_fit_model`); then,
    with one host synchronisation for the batch, the values: ``inputs`` must be finite
    (a NaN would poison the BatchNorm running statistics and the weights) and, with
    ``class_indices`` on a GPU, the labels non-negative. The class range needs the
    number of classes, known from the logits: :func:`check_class_logits` checks it
    (CPU labels, both ends) before any loss is computed.

    Parameters
    ----------
    inputs : Tensor
        The batch ``(B, ...)``, floating point.
    labels : Tensor
        One entry per example in dim 0.
    class_indices : bool
        The labels are class indices for cross-entropy: a 1-D integer tensor ``(B,)``
        of non-negative values (``ignore_index=-100`` is refused, not skipped). Leave
        ``False`` when a custom ``loss_fn`` decides what labels are.
    model : nn.Module, optional
        The trained model: inputs of another dtype than its parameters, a
        ``(B, H, W, C)`` batch or a single ``(C, H, W)`` image are refused with the fix.

    Raises
    ------
    TypeError
        ``inputs`` not a floating tensor or (with ``model``) not of the model's dtype;
        ``labels`` not a tensor, or (class indices) not of an integer dtype.
    ValueError
        Empty batch, (with ``model``) inputs laid out as ``(B, H, W, C)`` or without a
        batch dimension, labels of the wrong length or (class indices) shape,
        non-finite inputs, negative class indices on a GPU.

    Examples
    --------
    >>> check_training_batch(torch.zeros(2, 3), torch.zeros(3).long())
    Traceback (most recent call last):
    ...
    ValueError: labels must have one entry per example in dim 0: inputs have 2 examples \
(shape (2, 3)), labels have 3 (shape (3,))
    >>> check_training_batch(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2).long())
    Traceback (most recent call last):
    ...
    ValueError: inputs contains NaN or infinite values
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have a non-empty batch dim, got shape {tuple(inputs.shape)}"
        )
    check_inputs_fit_model((inputs,), model)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() < 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(_label_count_message(inputs, labels))
    if class_indices:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must be an integer tensor of class indices, got {labels.dtype} "
                "(pass a loss_fn for soft or other targets where one is accepted)"
            )
        if labels.dim() != 1:
            raise ValueError(
                f"labels must be a 1-D tensor of class indices, shape ({inputs.shape[0]},), "
                f"got shape {tuple(labels.shape)}"
            )
    finite = torch.isfinite(inputs).all()
    ok = finite
    if class_indices and labels.device.type != "cpu":
        # One synchronisation for both value checks. CPU labels are range-checked
        # against the number of classes by check_class_logits, at no such cost.
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
    """Logits must be ``(B, C)``; CPU labels are range-checked against ``C``.

    On a GPU the upper end of the range is not checked here (it would cost a second
    host synchronisation per step; CUDA's cross-entropy fails loudly on it), and
    negative labels, which cross-entropy would silently ignore (``-100``), are caught
    by :func:`check_training_batch` before the forward pass.

    Examples
    --------
    >>> check_class_logits(torch.zeros(2, 3), torch.tensor([0, 3]))
    Traceback (most recent call last):
    ...
    ValueError: labels must be class indices in [0, 2] (the model has 3 logits), got 3
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (batch, classes), got {shape}")
    num_classes = logits.shape[1]
    on_cpu = labels.device.type == "cpu" and labels.numel() > 0
    if on_cpu and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        _raise_label_range(labels, num_classes)


@contextlib.contextmanager
def leaf_in_place_error_explained(who: str = "model") -> Iterator[None]:
    """Turn autograd's "leaf Variable ... in-place" error into the in-place input message.

    A first-order pass differentiates a detached leaf; a model whose first operation
    writes into its input then fails in autograd (before anything is written) rather
    than in :func:`check_not_modified_in_place`.

    Examples
    --------
    >>> with leaf_in_place_error_explained():
    ...     torch.zeros(2, requires_grad=True).sub_(1)
    Traceback (most recent call last):
    ...
    RuntimeError: model modified its input in place (e.g. x.sub_(...) or an in-place \
activation on the input); the input gradient would be that of the modified tensor. \
Make the first operation out of place
    """
    try:
        yield
    except RuntimeError as error:
        if "leaf Variable that requires grad" not in str(error):
            raise
        raise RuntimeError(_in_place_message(who)) from error
