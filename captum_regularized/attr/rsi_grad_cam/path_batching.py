"""Step batching along a straight input-space path: the passes of RSI-Grad-CAM.

:func:`plan_path` splits ``batch`` examples times ``m + 1`` path points
``x_l = x' + (l/m)(x - x')`` into passes of bounded rows; the other functions build a
pass's rows, step-major (row ``s * g + e`` is point ``steps[s]`` of example ``e``).
Nothing here runs the model or reduces over the path (see
:doc:`/design_notes/rsi_grad_cam`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from captum_regularized._internal.batch_args import is_per_example, rows_of_args
from captum_regularized._internal.captum_compat import TargetType, expand_target

__all__ = [
    "PathPlan",
    "automatic_pass_rows",
    "expand_for_steps",
    "path_points",
    "per_example_flags",
    "plan_path",
    "step_passes",
    "take_examples",
    "take_positions",
]


@dataclass(frozen=True)
class PathPlan:
    """Which rows go into which pass: consecutive groups of examples, and per group the
    path points of each pass, from ``n_steps`` down to ``0``, each point once."""

    example_groups: list[slice]
    step_chunks: list[list[int]]


CPU_PASS_ELEMENTS = 2**20
"""Input elements per pass on CPUs (4 MiB of float32; the fastest size measured)."""


def automatic_pass_rows(inputs: Sequence[torch.Tensor]) -> int | None:
    """Rows per pass when the caller gave no ``internal_batch_size``: ``None`` (one
    pass) on accelerators, about :data:`CPU_PASS_ELEMENTS` input elements on CPUs.

    Examples
    --------
    >>> automatic_pass_rows((torch.zeros(4, 3, 96, 96),))
    37
    """
    if inputs[0].device.type != "cpu":
        return None
    per_row = sum(x[0].numel() for x in inputs) if inputs[0].shape[0] else 1
    return max(1, CPU_PASS_ELEMENTS // max(per_row, 1))


def plan_path(batch: int, n_steps: int, internal_batch_size: int | None) -> PathPlan:
    """Split ``batch`` examples times ``n_steps + 1`` path points into bounded passes.

    Groups of ``min(batch, internal_batch_size)`` examples, each pass holding as many
    consecutive points as fit (``None``: one pass). An empty batch gets one empty group
    with one pass, so the model still runs once. ``TypeError`` or ``ValueError`` unless
    ``internal_batch_size`` is ``None`` or a positive int.

    Examples
    --------
    >>> plan = plan_path(batch=2, n_steps=4, internal_batch_size=6)
    >>> plan.example_groups, plan.step_chunks
    ([slice(0, 2, None)], [[4, 3, 2], [1, 0]])
    >>> plan_path(batch=0, n_steps=2, internal_batch_size=4)
    PathPlan(example_groups=[slice(0, 0, None)], step_chunks=[[2, 1, 0]])
    """
    if internal_batch_size is not None:
        if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
            raise TypeError(
                "internal_batch_size must be a positive int or None, "
                f"got {type(internal_batch_size).__name__}"
            )
        if internal_batch_size < 1:
            raise ValueError(
                f"internal_batch_size must be a positive int or None, got {internal_batch_size}"
            )
    descending = list(range(n_steps, -1, -1))
    if batch == 0:
        return PathPlan([slice(0, 0)], [descending])
    if internal_batch_size is None:
        group, per_pass = batch, n_steps + 1
    else:
        group = min(batch, internal_batch_size)
        per_pass = max(1, internal_batch_size // group)
    groups = [slice(start, min(start + group, batch)) for start in range(0, batch, group)]
    chunks = [descending[i : i + per_pass] for i in range(0, len(descending), per_pass)]
    return PathPlan(groups, chunks)


def step_passes(
    steps: Sequence[int], examples: int, internal_batch_size: int | None
) -> list[list[int]]:
    """Split ``steps`` (in the order given) into passes of at most ``internal_batch_size``
    rows (at least one point each); ``None`` or no examples: one pass.

    Examples
    --------
    >>> step_passes([1, 3, 5, 7], examples=2, internal_batch_size=5)
    [[1, 3], [5, 7]]
    """
    if internal_batch_size is None or examples == 0:
        return [list(steps)]
    per_pass = max(1, internal_batch_size // examples)
    return [list(steps[i : i + per_pass]) for i in range(0, len(steps), per_pass)]


def take_positions(
    target: TargetType, additional_args: tuple[Any, ...] | None,
    per_example: Sequence[bool] | None, positions: Sequence[int],
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Keep the examples at ``positions`` of a group's per-example target and args
    (those flagged in ``per_example``); shared ones are kept whole.

    Examples
    --------
    >>> t, args = take_positions([5, 6, 7], (torch.arange(3), "x"), (True, False), [0, 2])
    >>> t, args[0].tolist(), args[1]
    ([5, 7], [0, 2], 'x')
    """
    if isinstance(target, list):
        target = [target[i] for i in positions]  # type: ignore[assignment]
    elif isinstance(target, torch.Tensor) and target.numel() > 1:
        target = target[torch.tensor(list(positions), dtype=torch.long, device=target.device)]
    if additional_args is not None:
        flags = per_example if per_example is not None else [
            isinstance(arg, torch.Tensor) and arg.dim() > 0 for arg in additional_args
        ]
        additional_args = tuple(
            arg[torch.tensor(list(positions), dtype=torch.long, device=arg.device)] if flag else arg
            for arg, flag in zip(additional_args, flags)
        )
    return target, additional_args


def per_example_flags(
    additional_args: tuple[Any, ...] | None, batch: int
) -> tuple[bool, ...] | None:
    """Which additional forward args are per-example: tensors whose dim 0 is ``batch``
    (decided once, on the full batch).

    Examples
    --------
    >>> per_example_flags((torch.ones(4), torch.ones(3), torch.tensor(1.0), "x"), 4)
    (True, False, False, False)
    """
    if additional_args is None:
        return None
    return tuple(is_per_example(arg, batch) for arg in additional_args)


def take_examples(
    target: TargetType, additional_args: tuple[Any, ...] | None, rows: slice, batch: int
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Restrict a per-example ``target`` and per-example additional args to ``rows``.

    Shared targets and args stay as they are; a list or 1-D tensor target without
    ``batch`` entries is a ``ValueError``.

    Examples
    --------
    >>> take_examples([3, 1, 2], None, slice(1, 3), 3)
    ([1, 2], None)
    """
    if isinstance(target, list):
        if len(target) != batch:
            raise ValueError(
                f"a list target needs one entry per example ({batch}), got {len(target)}"
            )
        target = target[rows]
    elif isinstance(target, torch.Tensor) and target.numel() > 1:
        if target.dim() != 1 or target.shape[0] != batch:
            raise ValueError(
                f"a tensor target must be a scalar or 1-D with one entry per example ({batch}), "
                f"got shape {tuple(target.shape)}"
            )
        target = target[rows]
    return target, rows_of_args(additional_args, rows, batch)


def path_points(
    inputs: Sequence[torch.Tensor], baselines: Sequence[torch.Tensor], steps: Sequence[int],
    n_steps: int,
) -> tuple[torch.Tensor, ...]:
    """Rows ``x' + (l/m)(x - x')`` for ``l`` in ``steps``, step-major, one tensor per input
    (``torch.lerp``: exact at both ends; a baseline of batch one is broadcast).

    Examples
    --------
    >>> x, b = torch.tensor([[2.0]]), torch.zeros(1, 1)
    >>> path_points((x,), (b,), [2, 1, 0], n_steps=2)[0].flatten().tolist()
    [2.0, 1.0, 0.0]
    """
    points = []
    for inp, base in zip(inputs, baselines):
        alphas = torch.tensor(steps, device=inp.device, dtype=inp.dtype) / n_steps
        alphas = alphas.view(-1, *([1] * inp.dim()))
        base = base.expand_as(inp)
        rows = torch.lerp(base.unsqueeze(0), inp.unsqueeze(0), alphas)
        points.append(rows.reshape(len(steps) * inp.shape[0], *inp.shape[1:]))
    return tuple(points)


def expand_for_steps(
    target: TargetType, additional_args: tuple[Any, ...] | None, n_points: int,
    per_example: Sequence[bool] | None = None,
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Repeat a group's per-example target and args for ``n_points`` step-major rows.

    ``per_example`` flags the args to repeat (``None``: every tensor with a dim 0); it
    must have one flag per arg (else ``ValueError``).

    Examples
    --------
    >>> _, (scale, bias) = expand_for_steps(None, (torch.ones(2), torch.ones(3)), 2, (True, False))
    >>> scale.shape, bias.shape
    (torch.Size([4]), torch.Size([3]))
    """
    expanded_target = expand_target(target, n_points)
    if additional_args is None:
        return expanded_target, None
    if per_example is None:
        per_example = [isinstance(arg, torch.Tensor) and arg.dim() > 0 for arg in additional_args]
    if len(per_example) != len(additional_args):
        raise ValueError(
            f"per_example needs one flag per additional arg ({len(additional_args)}), "
            f"got {len(per_example)}"
        )
    expanded_args = tuple(
        arg.repeat(n_points, *([1] * (arg.dim() - 1))) if flag else arg
        for arg, flag in zip(additional_args, per_example)
    )
    return expanded_target, expanded_args

