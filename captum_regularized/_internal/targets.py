"""Target selection: one score (or class index) per example, in every form Captum takes.

Captum's forms keep their meaning (``target=None`` on a ``(B,)`` output attributes that
scalar). Two additions: ``target=None`` on a ``(B, C > 1)`` output is the predicted
class, and pytorch-grad-cam's callables: one ``score(output) -> (B,)``, or a list of
``score(row) -> scalar``, one per example. Where a class *index* is needed
(:func:`class_indices`) a callable stands for its integer ``category`` attribute.
:func:`target_gradients` is the one-forward, one-backward input gradient of the scores.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from captum_regularized._internal.captum_compat import ScoreTarget, TargetType, run_forward
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)

__all__ = [
    "class_indices", "is_score_target", "per_example_score_targets", "target_gradients",
    "target_scores",
]

Forward = Callable[
    [Callable[..., Any], tuple[torch.Tensor, ...], tuple[Any, ...] | None], torch.Tensor
]
"""How a method runs the model: ``forward(forward_func, inputs, additional_args)``."""


def _range_error(bad: object, num_classes: int) -> ValueError:
    return ValueError(
        f"target must be a class index in [0, {num_classes - 1}] "
        f"(the model output has {num_classes} columns), got {bad}"
    )


def _is_score_callable(item: object) -> bool:
    """A target callable: callable, but neither a tensor nor a class."""
    return callable(item) and not isinstance(item, (torch.Tensor, type))


def is_score_target(target: object) -> bool:
    """True for a target callable or a non-empty list/tuple of them."""
    if isinstance(target, (list, tuple)):
        return bool(target) and any(_is_score_callable(item) for item in target)
    return _is_score_callable(target)


def per_example_score_targets(target: TargetType) -> TargetType:
    """A tuple of per-example target callables as a list (Captum slices and repeats lists)."""
    if isinstance(target, tuple) and is_score_target(target):
        return cast("list[ScoreTarget]", list(target))  # a mix is refused when scored
    return target


def _check_callable_list(target: Sequence[Any], batch: int) -> None:
    if isinstance(target, type) or any(isinstance(item, type) for item in target):
        raise TypeError("target callables must be instances (e.g. ClassifierOutputTarget(3)), "
                        "not classes")
    if not all(_is_score_callable(item) for item in target):
        kinds = sorted({type(item).__name__ for item in target})
        raise TypeError(
            "a list target holds class indices or one callable per example, not a mix; "
            f"got entries of types {kinds}"
        )
    if len(target) != batch:
        raise ValueError(
            f"a list of target callables needs one per example ({batch}), got {len(target)}"
        )


def _category(item: object) -> int:
    category = getattr(item, "category", None)
    if isinstance(category, torch.Tensor) and category.numel() == 1:
        category = int(category)
    if isinstance(category, bool) or not isinstance(category, numbers.Integral):
        raise TypeError(
            "target: this needs a class index per example, and a target callable gives one "
            "only through an integer `category` attribute (as pytorch-grad-cam's "
            "ClassifierOutputTarget has); got a "
            f"{type(item).__name__} without one. Pass an int, a list or a tensor of classes"
        )
    return int(category)


def _callable_classes(target: object, batch: int) -> TargetType:
    """The class indices that target callables stand for (their ``category``)."""
    if isinstance(target, (list, tuple)):
        _check_callable_list(target, batch)
        return [_category(item) for item in target]
    if isinstance(target, type):
        _check_callable_list([target], 1)
    return _category(target)


def _callable_scores(output: torch.Tensor, target: object) -> torch.Tensor:
    """Scores ``(B,)`` from one callable on the output, or one callable per row."""
    batch = output.shape[0]
    if isinstance(target, (list, tuple)):
        _check_callable_list(target, batch)
        scores = []
        for index, (score, row) in enumerate(zip(target, output)):
            value = score(row)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"target[{index}] must return one score (a 1-element tensor) for its "
                    f"example's output row, got {got}"
                )
            scores.append(value.reshape(()))
        if not scores:
            return output.new_zeros((0,))
        return torch.stack(scores)
    if isinstance(target, type):
        _check_callable_list([target], 1)
    scores_all = target(output)  # type: ignore[operator]
    if not isinstance(scores_all, torch.Tensor) or tuple(scores_all.shape) != (batch,):
        got = tuple(scores_all.shape) if isinstance(scores_all, torch.Tensor) else type(scores_all)
        raise ValueError(
            f"a target callable must return one score per example, shape ({batch},), for the "
            f"model output of shape {tuple(output.shape)}; got {got}"
        )
    return scores_all


def class_indices(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Per-example class indices ``(B,)`` (long, on ``output.device``) for a 2-D output.

    ``target`` takes Captum's forms; ``None`` means ``output.argmax(1)``, a target
    callable (or a list of them) its integer ``category`` attribute. A target that does
    not fit the output is a ``ValueError``, one of another type a ``TypeError``.

    Examples
    --------
    >>> out = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.0]])
    >>> class_indices(out, None).tolist(), class_indices(out, 2).tolist()
    ([1, 0], [2, 2])
    """
    if output.dim() != 2:
        raise ValueError(
            "this method needs a model output of shape (batch, classes); "
            f"got shape {tuple(output.shape)}"
        )
    batch, num_classes = output.shape
    if target is None:
        return output.detach().argmax(dim=1)
    if is_score_target(target) or isinstance(target, type):
        target = _callable_classes(target, batch)
    if isinstance(target, tuple):
        if len(target) != 1:
            raise ValueError(
                f"a tuple target indexes the output's trailing dims; a 2-D output takes one "
                f"index, got {target}"
            )
        target = target[0]
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list, a tuple or a tensor, not a bool")
    if isinstance(target, int):
        if not 0 <= target < num_classes:
            raise _range_error(target, num_classes)
        return torch.full((batch,), target, dtype=torch.long, device=output.device)
    if isinstance(target, list):
        return _list_classes(target, batch, num_classes, output.device)
    if isinstance(target, torch.Tensor):
        return _tensor_classes(target, batch, num_classes, output.device)
    raise TypeError(
        f"target must be None, an int, a tuple, a list or a tensor, got {type(target).__name__}"
    )


def _list_classes(
    target: list[Any], batch: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """A list of ints (or 1-tuples, or 0-d tensors), one per example."""
    if len(target) != batch:
        raise ValueError(f"a list target needs one entry per example ({batch}), got {len(target)}")
    flat = []
    for item in target:
        if isinstance(item, tuple):
            if len(item) != 1:
                raise ValueError(f"target tuples for a 2-D output hold one index, got {item}")
            item = item[0]
        if isinstance(item, torch.Tensor):
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(f"target list entries must be ints, got {type(item).__name__}")
        flat.append(item)
    bad = [t for t in flat if not 0 <= t < num_classes]
    if bad:
        raise _range_error(bad[0], num_classes)
    return torch.tensor(flat, dtype=torch.long, device=device)


def _tensor_classes(
    target: torch.Tensor, batch: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """An integer tensor: one index for all, or one per example."""
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"a tensor target must hold integer class indices, got {target.dtype}")
    flat_target = target.reshape(-1).to(device=device, dtype=torch.long)
    if flat_target.numel() == 1:
        flat_target = flat_target.expand(batch)
    elif target.dim() != 1 or flat_target.numel() != batch:
        raise ValueError(
            f"a tensor target must be a scalar or 1-D with one entry per example ({batch}), "
            f"got shape {tuple(target.shape)}"
        )
    if flat_target.numel() == 0:  # an empty batch's empty target
        return flat_target.clone()
    low, high = int(flat_target.min()), int(flat_target.max())
    if low < 0 or high >= num_classes:
        raise _range_error(low if low < 0 else high, num_classes)
    return flat_target.clone()


def target_scores(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Select one score per example, shape ``(B,)``, keeping the graph.

    A ``(B,)`` output takes ``target=None``; a 2-D output goes through
    :func:`class_indices` (``None`` on one column is that column); a higher-rank output
    takes a tuple (for every example) or a list of tuples indexing its trailing dims. A
    target callable gets the whole output, a list of them one row each. Errors as in
    :func:`class_indices`.

    Examples
    --------
    >>> out = torch.tensor([[0.1, 2.0], [1.0, 0.0]])
    >>> target_scores(out, None).tolist(), target_scores(out, lambda o: o[:, 1]).tolist()
    ([2.0, 1.0], [2.0, 0.0])
    >>> target_scores(out, [lambda row: row[1], lambda row: row[0]]).tolist()
    [2.0, 1.0]
    """
    if output.dim() == 0:
        raise ValueError("the model output must have a batch dimension, got a 0-d tensor")
    if is_score_target(target) or isinstance(target, type):
        return _callable_scores(output, target)
    if output.dim() == 1:
        if target is not None:
            raise ValueError(
                "the model returns one scalar per example (shape (batch,)); pass target=None"
            )
        return output
    if output.dim() == 2:
        if output.shape[1] == 1 and target is None:
            return output[:, 0]
        index = class_indices(output, target)
        return output.gather(1, index[:, None])[:, 0]
    return _trailing_scores(output, target)


def _trailing_scores(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Scores of a higher-rank output, indexed by a tuple or a list of tuples."""
    batch = output.shape[0]
    trailing = tuple(output.shape[1:])
    per_example: list[tuple[int, ...]]
    if isinstance(target, tuple):
        per_example = [target] * batch  # type: ignore[list-item]  # callables went above
    elif isinstance(target, list) and all(isinstance(t, tuple) for t in target):
        if len(target) != batch:
            raise ValueError(
                f"a list target needs one entry per example ({batch}), got {len(target)}"
            )
        per_example = [t for t in target if isinstance(t, tuple)]
    else:
        raise ValueError(
            f"the model output has shape {tuple(output.shape)}; select one value per example "
            f"with a tuple target of {len(trailing)} indices (or a list of such tuples)"
        )
    for item in per_example:
        if len(item) != len(trailing) or not all(0 <= i < n for i, n in zip(item, trailing)):
            raise ValueError(f"target {item} does not index an output of trailing shape {trailing}")
    rows = torch.arange(batch, device=output.device)
    columns = [
        torch.tensor([t[d] for t in per_example], device=output.device)
        for d in range(len(trailing))
    ]
    selector = (rows, *columns)
    return output[selector]


def target_gradients(
    forward_func: Callable[..., Any], inputs: tuple[torch.Tensor, ...], target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None, *, forward: Forward = run_forward,
    backward: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[torch.Tensor, ...]:
    """Gradient of the sum of the target scores w.r.t. every input: one forward, one backward.

    The inputs are checked and never modified; the model is left as found, also when
    this raises. An input the scores do not depend on gets zeros. ``forward`` runs the
    model (guided backpropagation passes its recording pass) and ``backward()`` is
    entered around the backward pass only (the guided rule's switch).

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> (g,) = target_gradients(model, (torch.rand(4, 3),), target=1)
    >>> torch.allclose(g, model.weight[1].expand(4, 3))
    True
    """
    module = find_module(forward_func)
    check_attribution_inputs(inputs, module)
    with preserved_model(module), kept_batchnorm_statistics(module), torch.enable_grad():
        leaves = tuple(fresh_leaf(x) for x in inputs)
        scores = target_scores(forward(forward_func, leaves, additional_forward_args), target)
        with backward():
            grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
