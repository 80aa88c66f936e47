"""Target selection and the input gradient of the selected scores.

Every attribution method of this package picks one score per example from the model
output (:func:`target_scores`, :func:`class_indices`), in every form Captum accepts,
validated, on the output's device. Captum's meaning is kept: ``target=None`` on a
per-example scalar output attributes that scalar. One addition, used by every method
of this package: ``target=None`` on a 2-D output with more than one column means the
predicted class (argmax), as in the papers this package implements.

:func:`target_gradients` is the one-forward, one-backward input gradient of those
scores, with the model left as found; positive/negative saliency take it plainly and
guided backpropagation through its guided rule. Users: every class of
:mod:`captum_regularized.attr`, the metrics that score a target class, the guided rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import TargetType, run_forward
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)

__all__ = ["class_indices", "target_gradients", "target_scores"]

Forward = Callable[
    [Callable[..., Any], tuple[torch.Tensor, ...], tuple[Any, ...] | None], torch.Tensor
]
"""How a method runs the model: ``forward(forward_func, inputs, additional_args)``."""


def _range_error(bad: object, num_classes: int) -> ValueError:
    return ValueError(
        f"target must be a class index in [0, {num_classes - 1}] "
        f"(the model output has {num_classes} columns), got {bad}"
    )


def class_indices(output: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Per-example class indices ``(B,)`` (long, on ``output.device``) for a 2-D output.

    Parameters
    ----------
    output : Tensor
        Model output of shape ``(B, C)``.
    target : int, tuple, list, Tensor or None
        Any of Captum's target forms. ``None`` means ``output.argmax(1)``.

    Raises
    ------
    ValueError
        When the output is not 2-D, an index is outside ``[0, C-1]`` or a per-example
        target does not have ``B`` entries.

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
    list of tuples (one per example) that index the trailing dims, as in Captum.

    Examples
    --------
    >>> out = torch.tensor([[0.1, 2.0], [1.0, 0.0]])
    >>> target_scores(out, None).tolist()
    [2.0, 1.0]
    >>> target_scores(torch.tensor([3.0, 4.0]), None).tolist()
    [3.0, 4.0]
    """
    if output.dim() == 0:
        raise ValueError("the model output must have a batch dimension, got a 0-d tensor")
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
        per_example = [target] * batch
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
        leaves = tuple(x.detach().requires_grad_() for x in inputs)
        scores = target_scores(forward(forward_func, leaves, additional_forward_args), target)
        with backward():
            grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
