"""Target selection and the input gradient of the selected scores.

Every attribution method of this package picks one score per example from the model
output (:func:`target_scores`, :func:`class_indices`), in every form Captum accepts,
validated, on the output's device. Captum's meaning is kept: ``target=None`` on a
per-example scalar output attributes that scalar. Two additions, used by every method
of this package: ``target=None`` on a 2-D output with more than one column means the
predicted class (argmax), as in the papers this package implements; and
pytorch-grad-cam's target callables:

* one callable ``score(output) -> (B,)``, given the whole ``(B, classes)`` output
  (pytorch-grad-cam's ``ClassifierOutputTarget(k)`` returns ``output[:, k]`` there);
* a list (or tuple) of callables, one per example, each given its example's 1-D
  output row and returning one score (pytorch-grad-cam's
  ``targets=[ClassifierOutputTarget(3), ...]``).

Any callable that is not a class counts (``pytorch_grad_cam`` is never imported).
:func:`target_scores` differentiates what they return. Where a class *index* is
needed (:func:`class_indices`: the class-comparison maps, the metrics' target-class
probability) a callable stands for its integer ``category`` attribute, as
``ClassifierOutputTarget`` has; a callable without one is a ``TypeError`` there.

:func:`target_gradients` is the one-forward, one-backward input gradient of those
scores, with the model left as found; positive/negative saliency take it plainly and
guided backpropagation through its guided rule. Users: every class of
:mod:`captum_regularized.attr`, the metrics that score a target class, the guided rule.
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
    "class_indices",
    "is_score_target",
    "per_example_score_targets",
    "target_gradients",
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
    """True for a target callable or a non-empty list/tuple of them.

    Examples
    --------
    >>> is_score_target(lambda out: out[:, 0]), is_score_target([1, 2])
    (True, False)
    >>> is_score_target([lambda row: row[0], lambda row: row[1]])
    True
    """
    if isinstance(target, (list, tuple)):
        return bool(target) and any(_is_score_callable(item) for item in target)
    return _is_score_callable(target)


def per_example_score_targets(target: TargetType) -> TargetType:
    """A tuple of per-example target callables as a list (Captum slices and repeats lists).

    Everything else is returned as it is.

    Examples
    --------
    >>> first = lambda row: row[0]
    >>> per_example_score_targets((first, first)) == [first, first]
    True
    >>> per_example_score_targets((1,))
    (1,)
    """
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

    Parameters
    ----------
    output : Tensor
        Model output of shape ``(B, C)``.
    target : int, tuple, list, Tensor, callable or None
        Any of Captum's target forms. ``None`` means ``output.argmax(1)``. A target
        callable (or a list of them, one per example) stands for its integer
        ``category`` attribute (pytorch-grad-cam's ``ClassifierOutputTarget(k)`` for
        class ``k``).

    Raises
    ------
    ValueError
        When the output is not 2-D, an index is outside ``[0, C-1]`` or a per-example
        target does not have ``B`` entries.
    TypeError
        For a target of another type, or a callable without an integer ``category``.

    Examples
    --------
    >>> out = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.0]])
    >>> class_indices(out, None).tolist(), class_indices(out, 2).tolist()
    ([1, 0], [2, 2])
    >>> class_indices(out, [0, 1]).tolist()
    [0, 1]
    """
    if output.dim() != 2:
        raise ValueError(
            "this method needs a model output of shape (batch, classes); "
            f"got shape {tuple(output.shape)}"
        )
    batch, num_classes = output.shape
    device = output.device
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
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if isinstance(target, list):
        if len(target) != batch:
            raise ValueError(
                f"a list target needs one entry per example ({batch}), got {len(target)}"
            )
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
    if isinstance(target, torch.Tensor):
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
    raise TypeError(
        f"target must be None, an int, a tuple, a list or a tensor, got {type(target).__name__}"
    )


def target_scores(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Select one score per example, shape ``(B,)``, keeping the graph.

    A 2-D output goes through :func:`class_indices` (``None`` = predicted class when it
    has more than one column, the single column otherwise). Outputs of shape ``(B,)``
    take ``target=None``. Higher-rank outputs take a tuple (same for every example) or a
    list of tuples (one per example) that index the trailing dims, as in Captum. A
    target callable gets the whole output and returns ``(B,)`` scores; a list (or tuple)
    of callables, one per example, each gets its example's output row and returns one
    score (pytorch-grad-cam's conventions).

    Raises
    ------
    ValueError
        For a target that does not fit the output (see :func:`class_indices`), and for
        a target callable that does not return one score per example.
    TypeError
        For a target of another type, a list mixing callables and indices, or a class
        given where an instance is expected.

    Examples
    --------
    >>> out = torch.tensor([[0.1, 2.0], [1.0, 0.0]])
    >>> target_scores(out, None).tolist()
    [2.0, 1.0]
    >>> target_scores(torch.tensor([3.0, 4.0]), None).tolist()
    [3.0, 4.0]
    >>> target_scores(out, lambda output: output[:, 1]).tolist()
    [2.0, 0.0]
    >>> target_scores(out, [lambda row: row[1], lambda row: row[0]]).tolist()
    [2.0, 1.0]
    """
    if output.dim() == 0:
        raise ValueError("the model output must have a batch dimension, got a 0-d tensor")
    if is_score_target(target) or isinstance(target, type):
        return _callable_scores(output, target)
    batch = output.shape[0]
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
            raise ValueError(
                f"target {item} does not index an output of trailing shape {trailing}"
            )
    rows = torch.arange(batch, device=output.device)
    columns = [
        torch.tensor([t[d] for t in per_example], device=output.device)
        for d in range(len(trailing))
    ]
    selector = (rows, *columns)
    return output[selector]


def target_gradients(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    *,
    forward: Forward = run_forward,
    backward: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[torch.Tensor, ...]:
    """Gradient of the sum of the target scores w.r.t. every input: one forward, one backward.

    ``target`` takes every form :func:`target_scores` takes. The inputs are checked
    (floating, finite, one batch size, on the model's device) and never modified: the
    forward pass runs on fresh leaves sharing their storage. It runs in the model's own
    train/eval mode; modes, ``requires_grad`` flags and BatchNorm running statistics are
    as before the call, also when it raises. An input the scores do not depend on gets
    zeros.

    Parameters
    ----------
    forward_func : callable
        The model, or any function of the inputs returning scores.
    inputs : tuple of Tensor
        Floating-point inputs sharing the batch dim 0.
    target : any Captum target form, optional
        The score of each example (see :func:`target_scores`).
    additional_forward_args : tuple, optional
        Extra arguments of ``forward_func`` after the inputs.
    forward : callable, optional
        Runs the model; the default calls it plainly. Guided backpropagation passes its
        recording forward pass.
    backward : callable, optional
        A context manager factory entered around the backward pass only (the guided
        rule's switch); the default changes nothing.

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
