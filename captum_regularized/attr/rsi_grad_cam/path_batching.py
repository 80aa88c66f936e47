"""Step batching along a straight input-space path: the path engine of RSI-Grad-CAM.

:class:`~captum_regularized.attr.LayerRSIGradCam` evaluates a model at ``m + 1``
points ``x_l = x' + (l/m)(x - x')``, ``l = 0..m``. Doing that one point per
forward/backward pass is slow; doing all of them at once may not fit in memory. This
module splits the work into passes and builds each pass's rows:

* :func:`plan_path` splits the work into passes of at most ``internal_batch_size``
  rows: groups of examples, and per group runs of consecutive path points. Points are
  visited from the real input (``l = m``) down to the baseline (``l = 0``), so the first
  pass of every group sees the real input (handy for ``target=None`` = predicted class).
  :func:`automatic_pass_rows` picks ``internal_batch_size`` when the caller gave none.
* :func:`step_passes` splits any list of path points (for instance only the new
  midpoints of a refinement that doubles the step count) into passes of bounded rows.
* :func:`take_examples` / :func:`path_points` / :func:`expand_for_steps` build the rows
  of one pass (step-major: row ``s * g + e`` is point ``steps[s]`` of example ``e``).
  Additional forward arguments follow Captum's convention: a tensor whose dim 0 is the
  batch is per-example (restricted and repeated with the rows); anything else, a shared
  ``(classes,)`` bias or a 0-d tensor included, is passed unchanged to every call
  (:func:`per_example_flags` tells which is which, on the full batch).
  :func:`take_positions` keeps some examples of a group (those still being refined).

Nothing here runs the model or reduces over the path: the method's own file does
(the layer's activation comes from
:class:`~captum_regularized._internal.layer_tap.LayerTap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from captum_regularized._internal.batch_args import is_per_example
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
    """Which rows go into which pass.

    Attributes
    ----------
    example_groups : list of slice
        Consecutive groups of examples, processed one after another.
    step_chunks : list of list of int
        Path-point indices of each pass within a group, descending from ``n_steps``
        to ``0`` and together covering every point exactly once.
    """

    example_groups: list[slice]
    step_chunks: list[list[int]]


CPU_PASS_ELEMENTS = 2**20
"""Input elements per pass that :func:`automatic_pass_rows` aims at on CPUs (4 MiB of
float32): measured on torchvision's resnet18 at 96x96 on a 2-core CPU, passes of about
this size ran 1.4x faster than one pass over all 204 rows, which falls out of cache."""


def automatic_pass_rows(inputs: Sequence[torch.Tensor]) -> int | None:
    """Rows per pass when the caller gave no ``internal_batch_size``.

    ``None`` (everything in one pass) on accelerators, which want large batches; on
    CPUs about :data:`CPU_PASS_ELEMENTS` input elements per pass (at least one row),
    which keeps a pass's activations in cache. Results do not depend on the pass size.

    Examples
    --------
    >>> automatic_pass_rows((torch.zeros(4, 3, 96, 96),))
    37
    >>> automatic_pass_rows((torch.zeros(1, 3, 1024, 1024),))
    1
    """
    if inputs[0].device.type != "cpu":
        return None
    per_row = sum(x[0].numel() for x in inputs) if inputs[0].shape[0] else 1
    return max(1, CPU_PASS_ELEMENTS // max(per_row, 1))


def plan_path(batch: int, n_steps: int, internal_batch_size: int | None) -> PathPlan:
    """Split ``batch`` examples times ``n_steps + 1`` path points into bounded passes.

    ``internal_batch_size=None`` puts everything into one pass. Otherwise every pass
    holds at most ``internal_batch_size`` rows: groups of ``min(batch, internal_batch_size)``
    examples, each pass holding as many consecutive points of its group as fit. An empty
    batch (``batch=0``) gets one empty group whose single pass holds every point (zero
    rows), so a caller still runs the model once and learns the layer's shape.

    Raises
    ------
    TypeError, ValueError
        When ``internal_batch_size`` is not ``None`` or a positive int.

    Examples
    --------
    >>> plan = plan_path(batch=2, n_steps=4, internal_batch_size=6)
    >>> plan.example_groups, plan.step_chunks
    ([slice(0, 2, None)], [[4, 3, 2], [1, 0]])
    >>> plan_path(batch=3, n_steps=1, internal_batch_size=2).example_groups
    [slice(0, 2, None), slice(2, 3, None)]
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
    """Split ``steps`` (path points, in the order given) into passes of bounded rows.

    A pass of ``k`` points over ``examples`` examples has ``k * examples`` rows. With
    ``internal_batch_size=None``, or no examples, every point goes into one pass;
    otherwise each pass holds ``max(1, internal_batch_size // examples)`` consecutive
    points of the list (so at most ``internal_batch_size`` rows whenever
    ``examples <= internal_batch_size``, as :func:`plan_path`'s groups guarantee).

    Examples
    --------
    >>> step_passes([1, 3, 5, 7], examples=2, internal_batch_size=5)
    [[1, 3], [5, 7]]
    >>> step_passes([4, 3, 2, 1, 0], examples=3, internal_batch_size=None)
    [[4, 3, 2, 1, 0]]
    """
    if internal_batch_size is None or examples == 0:
        return [list(steps)]
    per_pass = max(1, internal_batch_size // examples)
    return [list(steps[i : i + per_pass]) for i in range(0, len(steps), per_pass)]


def take_positions(
    target: TargetType,
    additional_args: tuple[Any, ...] | None,
    per_example: Sequence[bool] | None,
    positions: Sequence[int],
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Keep the examples at ``positions`` of a group's target and additional args.

    The group's ``target`` and ``additional_args`` come from :func:`take_examples`:
    a list target or a 1-D tensor target has one entry per example of the group and is
    restricted, a shared target is kept. Args flagged in ``per_example`` (from
    :func:`per_example_flags` on the full batch) are restricted along dim 0, the
    others passed unchanged.

    Examples
    --------
    >>> t, args = take_positions([5, 6, 7], (torch.arange(3), "x"), (True, False), [0, 2])
    >>> t, args[0].tolist(), args[1]
    ([5, 7], [0, 2], 'x')
    >>> take_positions(torch.tensor([4, 5, 6]), None, None, [1])[0].tolist()
    [5]
    """
    if isinstance(target, list):
        target = [target[i] for i in positions]  # type: ignore[assignment]
    elif isinstance(target, torch.Tensor) and target.numel() > 1:
        target = target[torch.tensor(list(positions), dtype=torch.long, device=target.device)]
    if additional_args is not None:
        flags = (
            per_example
            if per_example is not None
            else [isinstance(arg, torch.Tensor) and arg.dim() > 0 for arg in additional_args]
        )
        additional_args = tuple(
            arg[torch.tensor(list(positions), dtype=torch.long, device=arg.device)]
            if flag
            else arg
            for arg, flag in zip(additional_args, flags)
        )
    return target, additional_args


def per_example_flags(
    additional_args: tuple[Any, ...] | None, batch: int
) -> tuple[bool, ...] | None:
    """Which additional forward args are per-example: tensors whose dim 0 is ``batch``.

    Decide this once, on the full batch: after :func:`take_examples` a group's size may
    happen to equal the length of a shared tensor.

    Examples
    --------
    >>> per_example_flags((torch.ones(4), torch.ones(3), torch.tensor(1.0), "x"), 4)
    (True, False, False, False)
    >>> per_example_flags(None, 4) is None
    True
    """
    if additional_args is None:
        return None
    return tuple(is_per_example(arg, batch) for arg in additional_args)


def take_examples(
    target: TargetType, additional_args: tuple[Any, ...] | None, rows: slice, batch: int
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Restrict a per-example ``target`` and per-example additional args to ``rows``.

    Shared targets (an int, a tuple, a one-element tensor, ``None``) stay as they are; a
    list or 1-D tensor target must have one entry per example. Args that are not
    per-example (see :func:`per_example_flags`) are passed unchanged.

    Raises
    ------
    ValueError
        When a list or tensor target does not have ``batch`` entries.

    Examples
    --------
    >>> take_examples([3, 1, 2], None, slice(1, 3), 3)
    ([1, 2], None)
    >>> t, args = take_examples(4, (torch.arange(3), "x"), slice(0, 1), 3)
    >>> t, args[0].tolist(), args[1]
    (4, [0], 'x')
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
    if additional_args is not None:
        additional_args = tuple(
            arg[rows] if is_per_example(arg, batch) else arg for arg in additional_args
        )
    return target, additional_args


def path_points(
    inputs: Sequence[torch.Tensor],
    baselines: Sequence[torch.Tensor],
    steps: Sequence[int],
    n_steps: int,
) -> tuple[torch.Tensor, ...]:
    """Rows ``x' + (l/m)(x - x')`` for ``l`` in ``steps``, step-major, one tensor per input.

    Uses ``torch.lerp``, which is exact at both ends: point ``m`` is the input itself and
    point ``0`` the baseline. Baselines broadcast against their inputs (batch of one).

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
    target: TargetType,
    additional_args: tuple[Any, ...] | None,
    n_points: int,
    per_example: Sequence[bool] | None = None,
) -> tuple[TargetType, tuple[Any, ...] | None]:
    """Repeat a group's per-example target and args for ``n_points`` step-major rows.

    Parameters
    ----------
    target : TargetType
        The group's target (see :func:`take_examples`).
    additional_args : tuple or None
        The group's additional forward args.
    n_points : int
        Path points per example in the pass.
    per_example : sequence of bool, optional
        One flag per additional arg, from :func:`per_example_flags` on the full batch;
        flagged args are repeated, the others passed unchanged. ``None`` repeats every
        tensor that has a dim 0 (only right when no arg is shared).

    Raises
    ------
    ValueError
        When ``per_example`` does not have one flag per additional arg.

    Examples
    --------
    >>> expand_for_steps([1, 2], None, 2)
    ([1, 2, 1, 2], None)
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

