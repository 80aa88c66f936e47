"""Per-class input gradients from one forward pass, reduced on the fly.

Methods that compare the target's gradient with the gradients of the other classes
(active/inactive saliency) need ``dS_c/dx`` for many classes ``c``. Storing all of
them costs ``num_classes x input`` memory; this engine never does. It runs the model
once, then back-propagates class *chunks* of the output and folds every chunk into
running reductions (the target's gradient, the element-wise maximum and minimum over
the compared classes), so the live gradient memory is ``class_chunk_size x input``.

A chunk is back-propagated either

* ``"vmap"``: in one batched backward pass (``torch.autograd.grad(...,
  is_grads_batched=True)``), fast on GPUs; or
* ``"loop"``: one backward pass per class, reusing the graph (``retain_graph=True``)
  and folding each gradient in at once (live gradient memory ``1 x input``); this is
  the arithmetic lower bound on CPUs.

``"auto"`` picks ``"vmap"`` on CUDA and ``"loop"`` elsewhere (measured: on CPUs the
batched backward is no faster and holds more memory). Whenever ``"vmap"`` fails (an
operator of the model without a batching rule, an in-place op it rejects), the engine
falls back to the loop for the rest of the call.

Every row of the chunk table selects one class *per example* (rows may select
different classes for different examples, as the top-k comparison needs); each
example's gradient only depends on its own logit as long as the model treats the
examples of a batch independently (eval-mode BatchNorm, no cross-example ops).

Both engines leave the model as found: its train/eval modes and ``requires_grad``
flags, and its BatchNorm running statistics. The forward pass runs in the model's own
mode (a training BatchNorm normalises with the batch's statistics), but the running
mean, variance and batch counter are written back afterwards, so explaining a model
in the middle of training (or ten times under ``NoiseTunnel``) does not move them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from captum_regularized._internal.captum_compat import TargetType, run_forward
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.targets import class_indices, target_scores

__all__ = [
    "DEFAULT_CLASS_CHUNK_SIZE",
    "STRATEGIES",
    "ClassGradients",
    "CompareClasses",
    "class_gradients",
    "target_gradients",
]

DEFAULT_CLASS_CHUNK_SIZE = 32
"""Classes back-propagated together when ``class_chunk_size=None``."""

STRATEGIES = ("auto", "vmap", "loop")

CompareClasses = int | torch.Tensor | None


class ClassGradients(NamedTuple):
    """What :func:`class_gradients` returns, one tensor per input (shapes of the inputs).

    Attributes
    ----------
    target : tuple of Tensor
        ``dS_t/dx``, the gradient of each example's target class.
    max_other : tuple of Tensor
        Element-wise maximum of ``dS_c/dx`` over the compared classes ``c != t``
        (``-inf`` where an example has no compared class).
    min_other : tuple of Tensor
        Element-wise minimum over the same classes (``+inf`` where there are none).
    """

    target: tuple[torch.Tensor, ...]
    max_other: tuple[torch.Tensor, ...]
    min_other: tuple[torch.Tensor, ...]


def _check_forward_and_inputs(
    forward_func: Callable[..., Any], inputs: tuple[torch.Tensor, ...]
) -> None:
    check_attribution_inputs(inputs, find_module(forward_func))


def _leaves(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Fresh leaves that share storage with ``inputs`` (never modified in place)."""
    return tuple(x.detach().requires_grad_() for x in inputs)


def target_gradients(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradient of each example's target score w.r.t. every input: one forward, one backward.

    ``target`` takes every Captum form; ``None`` is the predicted class on a 2-D output
    with several columns and the output itself on a per-example scalar output. The
    forward pass runs in the model's own mode; BatchNorm running statistics are kept.

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> (g,) = target_gradients(model, (torch.rand(4, 3),), target=1)
    >>> torch.allclose(g, model.weight[1].expand(4, 3))
    True
    """
    _check_forward_and_inputs(forward_func, inputs)
    module = find_module(forward_func)
    with preserved_model(module), kept_batchnorm_statistics(module), torch.enable_grad():
        leaves = _leaves(inputs)
        output = run_forward(forward_func, leaves, additional_forward_args)
        scores = target_scores(output, target)
        grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    return tuple(_zeros_if_none(g, x) for g, x in zip(grads, leaves))


def _zeros_if_none(grad: torch.Tensor | None, leaf: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(leaf) if grad is None else grad


def _class_table(
    output: torch.Tensor,
    targets: torch.Tensor,
    compare_classes: CompareClasses,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of per-example classes to back-propagate, and what each row is for.

    Returns ``(classes, is_target, is_compared)``, each of shape ``(rows, B)``.
    """
    batch, num_classes = output.shape
    device = output.device
    if compare_classes is None:
        classes = torch.arange(num_classes, device=device)[:, None].expand(num_classes, batch)
        is_target = classes == targets[None]
        return classes, is_target, ~is_target
    if isinstance(compare_classes, bool) or not isinstance(compare_classes, (int, torch.Tensor)):
        raise TypeError(
            "compare_classes must be None, an int (top-k other classes) or a 1-D tensor of "
            f"class indices, got {type(compare_classes).__name__}"
        )
    if isinstance(compare_classes, int):
        if compare_classes < 1:
            raise ValueError(f"compare_classes must be a positive int, got {compare_classes}")
        k = min(compare_classes, num_classes - 1)
        scores = output.detach().scatter(1, targets[:, None], float("-inf"))
        others = scores.topk(k, dim=1).indices.T
    else:
        if compare_classes.is_floating_point() or compare_classes.is_complex():
            raise TypeError(f"compare_classes must hold integers, got {compare_classes.dtype}")
        if compare_classes.dim() != 1 or compare_classes.numel() == 0:
            raise ValueError(
                "compare_classes must be a non-empty 1-D tensor of class indices, got shape "
                f"{tuple(compare_classes.shape)}"
            )
        listed = compare_classes.to(device=device, dtype=torch.long)
        low, high = int(listed.min()), int(listed.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"compare_classes must hold class indices in [0, {num_classes - 1}], "
                f"got {low if low < 0 else high}"
            )
        others = listed[:, None].expand(listed.numel(), batch)
    classes = torch.cat([targets[None], others])
    is_target = torch.zeros_like(classes, dtype=torch.bool)
    is_target[0] = True
    return classes, is_target, classes != targets[None]


def _batched_chunk_gradients(
    output: torch.Tensor,
    leaves: tuple[torch.Tensor, ...],
    classes: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``(rows, *input.shape)`` gradients of the per-example classes in ``classes``, from
    one batched (vmapped) backward pass."""
    rows = classes.shape[0]
    one_hot = torch.zeros((rows, *output.shape), dtype=output.dtype, device=output.device)
    one_hot.scatter_(2, classes[:, :, None], 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(batching rule|is_grads_batched).*")
        grads = torch.autograd.grad(
            output, leaves, one_hot, retain_graph=True, is_grads_batched=True,
            allow_unused=True,
        )
    return tuple(
        g if g is not None else leaf.new_zeros((rows, *leaf.shape))
        for g, leaf in zip(grads, leaves)
    )


def _rows_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(rows, B)`` mask over a ``(rows, B, ...)`` chunk."""
    return keep.reshape(*keep.shape, *([1] * (like.dim() - 2)))


def _masked_extreme(chunk: torch.Tensor, keep: torch.Tensor, largest: bool) -> torch.Tensor:
    """Max (or min) over the rows of ``chunk`` where ``keep`` holds; +-inf where none does."""
    fill = torch.full((), float("-inf") if largest else float("inf"), dtype=chunk.dtype,
                      device=chunk.device)
    masked = torch.where(_rows_mask(keep, chunk), chunk, fill)
    return masked.amax(0) if largest else masked.amin(0)


def _fold_row(
    output: torch.Tensor,
    leaves: tuple[torch.Tensor, ...],
    classes: torch.Tensor,
    is_target: torch.Tensor,
    is_compared: torch.Tensor,
    target_grad: list[torch.Tensor],
    highest: list[torch.Tensor],
    lowest: list[torch.Tensor],
) -> None:
    """One backward pass for one class per example, folded into the running results.

    Every example's target occupies exactly one row of the class table, so its gradient
    is taken where that row comes, not summed.
    """
    one_hot = torch.zeros_like(output).scatter_(1, classes[:, None], 1)
    grads = torch.autograd.grad(output, leaves, one_hot, retain_graph=True, allow_unused=True)
    for i, (grad, leaf) in enumerate(zip(grads, leaves)):
        grad = _zeros_if_none(grad, leaf)
        shape = (-1,) + (1,) * (grad.dim() - 1)
        own, compared = is_target.view(shape), is_compared.view(shape)
        target_grad[i] = torch.where(own, grad, target_grad[i])
        highest[i] = torch.where(compared, torch.maximum(highest[i], grad), highest[i])
        lowest[i] = torch.where(compared, torch.minimum(lowest[i], grad), lowest[i])


def class_gradients(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None,
    strategy: str = "auto",
) -> ClassGradients:
    """Target gradient plus element-wise max/min of the other classes' gradients.

    Parameters
    ----------
    forward_func : callable
        Model (or function) returning ``(B, C)`` scores.
    inputs : tuple of Tensor
        Floating-point inputs sharing the batch dim 0.
    target : any Captum target form
        The class ``t`` of each example; ``None`` means the predicted class.
    additional_forward_args : tuple, optional
        Extra arguments of ``forward_func`` after the inputs.
    class_chunk_size : int, optional
        Classes back-propagated together by the ``"vmap"`` strategy (memory
        ``class_chunk_size x input``); ``None`` means :data:`DEFAULT_CLASS_CHUNK_SIZE`.
        The ``"loop"`` strategy always holds one class gradient at a time.
    compare_classes : None, int or 1-D Tensor
        ``None``: every class ``c != t`` (exact). ``k``: the ``k`` highest-scoring
        classes other than ``t`` per example (an approximation). A tensor: those classes
        (``t`` itself is skipped where listed).
    strategy : {"auto", "vmap", "loop"}
        How a chunk is back-propagated (see the module docstring); ``"vmap"`` falls
        back to ``"loop"`` where the batched backward fails.

    Returns
    -------
    ClassGradients
        Computed in the model's own train/eval mode; BatchNorm running statistics,
        modes and ``requires_grad`` flags are as before the call.

    Raises
    ------
    ValueError
        When the output is not ``(B, C)`` with ``C >= 2``, a target or compared class is
        out of range, or a size is not positive.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
    >>> grads = class_gradients(model, (torch.rand(1, 2),), target=0)
    >>> grads.target[0].tolist(), grads.max_other[0].tolist(), grads.min_other[0].tolist()
    ([[1.0, 0.0]], [[2.0, 1.0]], [[0.0, -1.0]])
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if class_chunk_size is None:
        class_chunk_size = DEFAULT_CLASS_CHUNK_SIZE
    if isinstance(class_chunk_size, bool) or not isinstance(class_chunk_size, int):
        raise TypeError(f"class_chunk_size must be an int or None, got {class_chunk_size!r}")
    if class_chunk_size < 1:
        raise ValueError(f"class_chunk_size must be a positive int, got {class_chunk_size}")
    _check_forward_and_inputs(forward_func, inputs)
    module = find_module(forward_func)
    with preserved_model(module), kept_batchnorm_statistics(module), torch.enable_grad():
        leaves = _leaves(inputs)
        output = run_forward(forward_func, leaves, additional_forward_args)
        if output.dim() != 2 or output.shape[1] < 2:
            raise ValueError(
                "comparing class gradients needs a model output of shape (batch, classes) "
                f"with at least 2 classes; got shape {tuple(output.shape)}"
            )
        targets = class_indices(output, target)
        classes, is_target, is_compared = _class_table(output, targets, compare_classes)
        use_vmap = strategy == "vmap" or (strategy == "auto" and output.device.type == "cuda")
        target_grad = [torch.zeros_like(x) for x in leaves]
        highest = [torch.full_like(x, float("-inf")) for x in leaves]
        lowest = [torch.full_like(x, float("inf")) for x in leaves]
        start = 0
        while start < classes.shape[0]:
            if not use_vmap:  # the loop gains nothing from stacking rows: fold one at a time
                _fold_row(output, leaves, classes[start], is_target[start],
                          is_compared[start], target_grad, highest, lowest)
                start += 1
                continue
            rows = slice(start, start + class_chunk_size)
            try:
                chunk = _batched_chunk_gradients(output, leaves, classes[rows])
            except (RuntimeError, NotImplementedError):
                use_vmap = False  # an operator without a batching rule: loop from here on
                continue
            for i, grads in enumerate(chunk):
                own = torch.where(_rows_mask(is_target[rows], grads), grads, 0).sum(0)
                target_grad[i] = target_grad[i] + own
                compared = is_compared[rows]
                highest[i] = torch.maximum(highest[i], _masked_extreme(grads, compared, True))
                lowest[i] = torch.minimum(lowest[i], _masked_extreme(grads, compared, False))
            start = rows.stop
    return ClassGradients(tuple(target_grad), tuple(highest), tuple(lowest))
