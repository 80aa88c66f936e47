"""The class-gradient engine of the active and inactive maps.

One forward pass; the rows of a class table (one class per example) are back-propagated
in chunks (``"vmap"``) or one by one (``"loop"``) and folded into running reductions
(:doc:`/design_notes/attribution_maps`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from captum_regularized._internal.captum_compat import TargetType, run_forward
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.model_state import (
    find_module,
    is_compiled,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.targets import class_indices
from captum_regularized._internal.user_feedback import (
    ProgressBar,
    check_progress,
    progress_bar,
    show_progress,
)

__all__ = ["ClassGradients", "class_gradients"]

DEFAULT_CLASS_CHUNK_SIZE = 32
"""Classes back-propagated together when ``class_chunk_size=None``."""

STRATEGIES = ("auto", "vmap", "loop")
"""How the engine back-propagates a chunk of classes."""

CompareClasses = int | torch.Tensor | None
Tensors = tuple[torch.Tensor, ...]


class ClassGradients(NamedTuple):
    """Per input: ``dS_t/dx``, and the element-wise max and min of the compared ``dS_c/dx``.

    ``-inf`` / ``+inf`` where an example has no compared class; both are empty when only
    the target's gradient was taken.
    """

    target: Tensors
    max_other: Tensors = ()
    min_other: Tensors = ()


def class_gradients(
    forward_func: Callable[..., Any], inputs: Tensors, target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None, class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None, strategy: str = "auto",
    progress: bool | None = False, label: str = "class gradients",
) -> ClassGradients:
    """Target gradient plus element-wise max/min of the other classes' gradients.

    The arguments are those of :meth:`~captum_regularized.attr.ActiveSaliency.attribute`
    (``progress`` off by default), ``strategy`` its ``backward_strategy`` and ``label``
    the progress bar's. The model runs in its own mode and is left as found.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
    >>> grads = class_gradients(model, (torch.rand(1, 2),), target=0)
    >>> grads.target[0].tolist(), grads.max_other[0].tolist(), grads.min_other[0].tolist()
    ([[1.0, 0.0]], [[2.0, 1.0]], [[0.0, -1.0]])
    """
    check_strategy(strategy, "strategy")
    chunk_size = _checked_chunk_size(class_chunk_size)
    check_progress(progress)
    module = find_module(forward_func)
    check_attribution_inputs(inputs, module)
    with preserved_model(module), kept_batchnorm_statistics(module), torch.enable_grad():
        leaves = tuple(fresh_leaf(x) for x in inputs)  # inputs stay untouched
        forward = functools.partial(run_forward, forward_func, leaves, additional_forward_args)
        output = forward()
        table = _class_table(output, target, compare_classes)
        # A compiled backward may run once per graph (AOT autograd donates its saved
        # buffers): there, every row after the first gets its own forward pass.
        rerun = forward if is_compiled(module) else None
        use_vmap = rerun is None and (
            strategy == "vmap" or (strategy == "auto" and output.device.type == "cuda")
        )
        total = table.classes.shape[0]  # known from the shape: no host synchronisation
        passes = math.ceil(total / chunk_size) if use_vmap else total
        with progress_bar(show_progress(progress, passes), total, label, "class") as bar:
            return _fold_classes(output, leaves, table, chunk_size if use_vmap else None,
                                 rerun, bar)


def check_strategy(strategy: object, name: str) -> None:
    """A ``ValueError`` naming ``name`` unless ``strategy`` is one of :data:`STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{name} must be one of {STRATEGIES}, got {strategy!r}")


def _checked_chunk_size(class_chunk_size: object) -> int:
    if class_chunk_size is None:
        return DEFAULT_CLASS_CHUNK_SIZE
    if isinstance(class_chunk_size, bool) or not isinstance(class_chunk_size, int):
        raise TypeError(f"class_chunk_size must be an int or None, got {class_chunk_size!r}")
    if class_chunk_size < 1:
        raise ValueError(f"class_chunk_size must be a positive int, got {class_chunk_size}")
    return class_chunk_size


class _ClassTable(NamedTuple):
    """Rows of per-example classes to back-propagate and what each row is for, ``(rows, B)``."""

    classes: torch.Tensor
    is_target: torch.Tensor
    is_compared: torch.Tensor


def _class_table(
    output: torch.Tensor, target: TargetType, compare_classes: CompareClasses
) -> _ClassTable:
    """Every class (``compare_classes=None``), or the target first and then the compared."""
    if output.dim() != 2 or output.shape[1] < 2:
        raise ValueError(
            "comparing class gradients needs a model output of shape (batch, classes) "
            f"with at least 2 classes; got shape {tuple(output.shape)}"
        )
    targets = class_indices(output, target)
    batch, num_classes = output.shape
    if compare_classes is None:
        classes = torch.arange(num_classes, device=output.device)[:, None]
        classes = classes.expand(num_classes, batch)
        is_target = classes == targets[None]
        return _ClassTable(classes, is_target, ~is_target)
    classes = torch.cat([targets[None], _compared_classes(output, targets, compare_classes)])
    is_target = torch.zeros_like(classes, dtype=torch.bool)
    is_target[0] = True
    return _ClassTable(classes, is_target, classes != targets[None])


def _compared_classes(
    output: torch.Tensor, targets: torch.Tensor, compare_classes: int | torch.Tensor
) -> torch.Tensor:
    """``(k, B)``: the ``k`` highest-scoring other classes of each example, or the listed."""
    if isinstance(compare_classes, bool) or not isinstance(compare_classes, (int, torch.Tensor)):
        raise TypeError(
            "compare_classes must be None, an int (top-k other classes) or a 1-D tensor of "
            f"class indices, got {type(compare_classes).__name__}"
        )
    batch, num_classes = output.shape
    if isinstance(compare_classes, int):
        if compare_classes < 1:
            raise ValueError(f"compare_classes must be a positive int, got {compare_classes}")
        k = min(compare_classes, num_classes - 1)
        scores = output.detach().scatter(1, targets[:, None], float("-inf"))
        return scores.topk(k, dim=1).indices.T
    if compare_classes.is_floating_point() or compare_classes.is_complex():
        raise TypeError(f"compare_classes must hold integers, got {compare_classes.dtype}")
    if compare_classes.dim() != 1 or compare_classes.numel() == 0:
        raise ValueError(
            "compare_classes must be a non-empty 1-D tensor of class indices, got shape "
            f"{tuple(compare_classes.shape)}"
        )
    listed = compare_classes.to(device=output.device, dtype=torch.long)
    low, high = int(listed.min()), int(listed.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"compare_classes must hold class indices in [0, {num_classes - 1}], "
            f"got {low if low < 0 else high}"
        )
    return listed[:, None].expand(listed.numel(), batch)


def _fold_classes(
    output: torch.Tensor, leaves: Tensors, table: _ClassTable, chunk_size: int | None,
    rerun: Callable[[], torch.Tensor] | None, bar: ProgressBar,
) -> ClassGradients:
    """Back-propagate the table's rows (in chunks, or one by one without ``chunk_size``)."""
    running = _RunningGradients(leaves)
    start, total = 0, table.classes.shape[0]
    while start < total:
        if chunk_size is not None:
            rows = slice(start, start + chunk_size)
            try:
                chunk = _chunk_gradients(output, leaves, table.classes[rows])
            except (RuntimeError, NotImplementedError):
                chunk_size = None  # an operator without a batching rule: loop from here
                continue
            running.add_chunk(chunk, table.is_target[rows], table.is_compared[rows])
            stop = min(rows.stop, total)
        else:
            if rerun is not None and start > 0:
                output = rerun()
            grads = _row_gradients(output, leaves, table.classes[start], rerun is None)
            running.add_row(grads, table.is_target[start], table.is_compared[start])
            stop = start + 1
        bar.update(stop - start)
        start = stop
    return ClassGradients(tuple(running.target), tuple(running.highest), tuple(running.lowest))


def _row_gradients(
    output: torch.Tensor, leaves: Tensors, classes: torch.Tensor, retain_graph: bool
) -> Tensors:
    """Input gradients of one class per example (``classes``, ``(B,)``): one backward pass."""
    one_hot = torch.zeros_like(output).scatter_(1, classes[:, None], 1)
    grads = torch.autograd.grad(output, leaves, one_hot, retain_graph=retain_graph,
                                allow_unused=True)
    return tuple(torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves))


def _chunk_gradients(output: torch.Tensor, leaves: Tensors, classes: torch.Tensor) -> Tensors:
    """``(rows, *input.shape)`` gradients of the rows ``classes``: one batched backward pass."""
    rows = classes.shape[0]
    one_hot = torch.zeros((rows, *output.shape), dtype=output.dtype, device=output.device)
    one_hot.scatter_(2, classes[:, :, None], 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(batching rule|is_grads_batched).*")
        grads = torch.autograd.grad(output, leaves, one_hot, retain_graph=True,
                                    is_grads_batched=True, allow_unused=True)
    return tuple(leaf.new_zeros((rows, *leaf.shape)) if g is None else g
                 for g, leaf in zip(grads, leaves))


class _RunningGradients:
    """The target's gradient and the running max/min over the compared classes.

    Every example's target occupies exactly one row of the class table, so a row takes
    its gradient where that row comes (a chunk sums its one masked row).
    """

    def __init__(self, leaves: Tensors) -> None:
        self.target = [torch.zeros_like(x) for x in leaves]
        self.highest = [torch.full_like(x, float("-inf")) for x in leaves]
        self.lowest = [torch.full_like(x, float("inf")) for x in leaves]

    def add_row(self, grads: Tensors, is_target: torch.Tensor, is_compared: torch.Tensor) -> None:
        for i, grad in enumerate(grads):
            shape = (-1,) + (1,) * (grad.dim() - 1)
            own, compared = is_target.view(shape), is_compared.view(shape)
            high, low = self.highest[i], self.lowest[i]
            self.target[i] = torch.where(own, grad, self.target[i])
            self.highest[i] = torch.where(compared, torch.maximum(high, grad), high)
            self.lowest[i] = torch.where(compared, torch.minimum(low, grad), low)

    def add_chunk(self, chunk: Tensors, is_target: torch.Tensor, is_compared: torch.Tensor) -> None:
        for i, grads in enumerate(chunk):
            own = torch.where(_rows_mask(is_target, grads), grads, 0).sum(0)
            self.target[i] = self.target[i] + own
            high = _masked_extreme(grads, is_compared, True)
            low = _masked_extreme(grads, is_compared, False)
            self.highest[i] = torch.maximum(self.highest[i], high)
            self.lowest[i] = torch.minimum(self.lowest[i], low)


def _rows_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(rows, B)`` mask over a ``(rows, B, ...)`` chunk."""
    return keep.reshape(*keep.shape, *([1] * (like.dim() - 2)))


def _masked_extreme(chunk: torch.Tensor, keep: torch.Tensor, largest: bool) -> torch.Tensor:
    """Max (or min) over the rows of ``chunk`` where ``keep`` holds; +-inf where none does."""
    fill = torch.full((), float("-inf") if largest else float("inf"), dtype=chunk.dtype,
                      device=chunk.device)
    masked = torch.where(_rows_mask(keep, chunk), chunk, fill)
    return masked.amax(0) if largest else masked.amin(0)
