"""The path integral of RSI-Grad-CAM: run the path points, reduce them by the trapezoid rule.

:class:`PathRunner` runs the passes that
:mod:`~captum_regularized.attr.rsi_grad_cam.path_batching` plans for one group of
examples and integrates them: streamed for a fixed ``n_steps`` (:class:`PathIntegral`,
points from ``l = m`` down), by nested refinement for ``n_steps="auto"`` (points stored
from ``l = 0`` up). Both add the terms of :func:`trapezoid_terms`, each in its own order
(see :doc:`/design_notes/rsi_grad_cam`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import (
    kept_batchnorm_statistics,
    kept_reached_batchnorm_statistics,
)
from captum_regularized._internal.targets import class_indices, is_score_target, target_scores
from captum_regularized._internal.user_feedback import ProgressBar
from captum_regularized.attr.rsi_grad_cam.path_batching import (
    PathPlan,
    expand_for_steps,
    path_points,
    step_passes,
    take_examples,
    take_positions,
)

__all__ = ["AUTO_START_STEPS", "PathRunner", "PathSettings"]

AUTO_START_STEPS = 4
"""Path intervals of the first level of ``n_steps="auto"``; later levels double it."""
SUM_CHUNK = 16
"""Intervals of stored points summed at once (bounds the temporaries of the sum)."""


class Group(NamedTuple):
    """The examples one group of passes explains, in the forms the passes take."""

    inputs: tuple[torch.Tensor, ...]
    baselines: tuple[torch.Tensor, ...]
    target: TargetType
    args: tuple[Any, ...] | None

    def take(
        self, positions: list[int], kept: torch.Tensor, per_example: tuple[bool, ...] | None
    ) -> Group:
        """The examples at ``positions`` (``kept`` on the device); a shared baseline stays."""
        target, args = take_positions(self.target, self.args, per_example, positions)
        return Group(
            tuple(x[kept] for x in self.inputs),
            tuple(b if b.shape[0] == 1 else b[kept] for b in self.baselines),
            target,
            args,
        )


@dataclass(frozen=True)
class PathSettings:
    """One ``attribute`` call's arguments, checked, in the forms the passes take."""

    model: nn.Module | None
    batch: int
    inputs: tuple[torch.Tensor, ...]
    baselines: tuple[torch.Tensor, ...]
    target: TargetType
    args: tuple[Any, ...] | None
    per_example: tuple[bool, ...] | None
    """Which additional forward args follow the batch (decided on the full batch)."""
    out_dtype: torch.dtype
    n_steps: int | None
    """``None`` for ``n_steps="auto"``."""
    tolerance: float
    max_steps: int
    internal_batch_size: int | None
    plan: PathPlan
    transform: Callable[[torch.Tensor], torch.Tensor]
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    variant: str
    relu_attributions: bool
    attr_dim_summation: bool
    grad_kwargs: dict[str, Any] | None

    def groups(self) -> Iterator[Group]:
        """The plan's groups of examples, each built when its turn comes."""
        for rows in self.plan.example_groups:
            yield Group(
                tuple(x[rows] for x in self.inputs),
                tuple(b if b.shape[0] == 1 else b[rows] for b in self.baselines),
                *take_examples(self.target, self.args, rows, self.batch),
            )

    def batchnorm_statistics_kept(self) -> AbstractContextManager[None]:
        """Keeps the model's BatchNorm statistics, or those a plain function's passes reach."""
        if self.model is not None:
            return kept_batchnorm_statistics(self.model)
        return kept_reached_batchnorm_statistics()

    def planned_work(self) -> tuple[int, int]:
        """Passes and path points the call will run (upper bounds for ``"auto"``)."""
        plan, rows_per_pass = self.plan, self.internal_batch_size
        groups = len(plan.example_groups)
        if self.n_steps is not None:
            return groups * len(plan.step_chunks), groups * (self.n_steps + 1)
        levels = [AUTO_START_STEPS]  # every example refined up to the last count allowed
        while 2 * levels[-1] <= self.max_steps:
            levels.append(2 * levels[-1])
        passes = 0
        for rows in plan.example_groups:
            examples = len(range(*rows.indices(self.batch)))
            passes += len(step_passes(list(range(levels[0] + 1)), examples, rows_per_pass))
            for m in levels[1:]:
                passes += len(step_passes(list(range(1, m, 2)), examples, rows_per_pass))
        return passes, groups * (levels[-1] + 1)


def trapezoid_terms(
    activations: torch.Tensor, gradients: torch.Tensor, descending: bool
) -> torch.Tensor:
    """Terms ``½(G_{l-1} + G_l)(A_l - A_{l-1})`` between consecutive points, in their order.

    The points ``(points, examples, C, h, w)`` run from ``l = m`` down when
    ``descending`` (the streamed path), from ``l = 0`` up otherwise (``"auto"``).
    """
    mean_gradients = 0.5 * (gradients[:-1] + gradients[1:])
    if descending:
        return mean_gradients * (activations[:-1] - activations[1:])
    return mean_gradients * (activations[1:] - activations[:-1])


def trapezoid_sum(
    activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool
) -> torch.Tensor:
    """Per-unit RSI over points stored from ``l = 0`` up, :data:`SUM_CHUNK` intervals at once."""
    total: torch.Tensor | None = None
    intervals = activations.shape[0] - 1
    for start in range(0, intervals, SUM_CHUNK):
        stop = min(start + SUM_CHUNK, intervals)
        grads = gradients[start : stop + 1]
        if relu_gradients:
            grads = torch.relu(grads)
        part = trapezoid_terms(activations[start : stop + 1], grads, descending=False).sum(0)
        total = part if total is None else total + part
    if total is None:
        raise RuntimeError("the path integral needs at least two points")
    return total


class PathIntegral:
    """Streamed trapezoidal sum over one group, points arriving from ``l = m`` down.

    Only the previous point is kept between passes, and terms are added one path step at
    a time, so neither memory nor the result depends on the pass sizes.
    """

    def __init__(self, relu_gradients: bool) -> None:
        self.relu_gradients = relu_gradients
        self.rsi: torch.Tensor | None = None
        self.at_input: torch.Tensor | None = None
        self.at_baseline: torch.Tensor | None = None
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(
        self, activations: torch.Tensor, gradients: torch.Tensor, ends_at_baseline: bool
    ) -> None:
        """Feed the points of one pass, shaped ``(steps, examples, C, h, w)``."""
        if self.relu_gradients:
            gradients = torch.relu(gradients)
        if self.at_input is None:
            self.at_input = activations[0]
        if ends_at_baseline:
            self.at_baseline = activations[-1]
        if self._previous is not None:
            activations = torch.cat((self._previous[0].unsqueeze(0), activations))
            gradients = torch.cat((self._previous[1].unsqueeze(0), gradients))
        self._previous = (activations[-1], gradients[-1])
        for term in trapezoid_terms(activations, gradients, descending=True):
            self.rsi = term if self.rsi is None else self.rsi + term

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(RSI, A_m, A_0)``, each ``(examples, C, h, w)``, once every point was added."""
        if self.rsi is None or self.at_input is None or self.at_baseline is None:
            raise RuntimeError("the path integral needs every point from l = m down to l = 0")
        return self.rsi, self.at_input, self.at_baseline


def cam_from_rsi(
    rsi: torch.Tensor, at_input: torch.Tensor, at_baseline: torch.Tensor, settings: PathSettings
) -> torch.Tensor:
    """The map ``(examples, 1, h, w)`` (or one per channel) from RSI, ``A_m`` and ``A_0``."""
    if settings.variant == "unit_selection":
        rsi = rsi * ((at_input > 0) & (rsi > 0) & (at_input > at_baseline))
    weights = rsi.mean(dim=(2, 3), keepdim=True)
    cam = weights * at_input
    if settings.attr_dim_summation:
        cam = cam.sum(dim=1, keepdim=True)
    if settings.relu_attributions:
        cam = torch.relu(cam)
    return cam


@dataclass
class Level:
    """The stored points of ``n_steps="auto"`` for the examples still refining."""

    n_steps: int
    activations: torch.Tensor
    """``(n_steps + 1, examples, C, h, w)`` from ``l = 0`` up; so are the gradients."""
    gradients: torch.Tensor
    group: Group
    rise: torch.Tensor
    """``y_t(x) - y_t(x')`` per example."""
    classes: torch.Tensor | None
    active: list[int]
    """Positions in the whole group of the examples still refining."""

    def keep(self, refining: list[int], per_example: tuple[bool, ...] | None) -> None:
        """Keep only the examples at positions ``refining``."""
        kept = torch.tensor(refining, dtype=torch.long, device=self.group.inputs[0].device)
        self.activations, self.gradients = self.activations[:, kept], self.gradients[:, kept]
        self.group = self.group.take(refining, kept, per_example)
        self.classes = None if self.classes is None else self.classes[kept]
        self.rise = self.rise[kept]
        self.active = [self.active[i] for i in refining]

    def double(self) -> None:
        """Move the points to the even slots of a grid of ``2 n_steps`` intervals."""
        self.activations = _spread(self.activations)
        self.gradients = _spread(self.gradients)
        self.n_steps *= 2


def _spread(coarse: torch.Tensor) -> torch.Tensor:
    finer = coarse.new_empty((2 * coarse.shape[0] - 1, *coarse.shape[1:]))
    finer[0::2] = coarse
    return finer


class PathRunner:
    """Runs the path points of one call through the model and integrates each group."""

    def __init__(
        self, forward_func: Callable[..., Any], tap: LayerTap, settings: PathSettings,
        bar: ProgressBar,
    ) -> None:
        self.forward_func, self.tap, self.settings, self.bar = forward_func, tap, settings, bar

    def integrate(self, group: Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps, deltas (float32 or wider) and step counts of one group of examples."""
        if self.settings.n_steps is None:
            return self._integrate_auto(group)
        return self._integrate_streamed(group, self.settings.n_steps)

    def _integrate_streamed(
        self, group: Group, n_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        integral = PathIntegral(relu_gradients=self.settings.variant == "relu_gradients")
        end_scores: list[torch.Tensor] = []  # [at the input, at the baseline]
        classes: torch.Tensor | None = None
        for steps in self.settings.plan.step_chunks:
            activations, gradients, scores, classes = self._run_pass(group, steps, n_steps, classes)
            integral.add(activations, gradients, ends_at_baseline=steps[-1] == 0)
            if not end_scores:
                end_scores.append(scores[0])
            if steps[-1] == 0:
                end_scores.append(scores[-1])
        rsi, at_input, at_baseline = integral.result()
        delta = rsi.sum(dim=(1, 2, 3)) - (end_scores[0] - end_scores[-1]).to(rsi.dtype)
        inputs = group.inputs[0]
        used = torch.full((inputs.shape[0],), n_steps, dtype=torch.long, device=inputs.device)
        return cam_from_rsi(rsi, at_input, at_baseline, self.settings), delta, used

    def _integrate_auto(self, group: Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        settings, device = self.settings, group.inputs[0].device
        level = self._first_level(group)
        examples, (channels, height, width) = len(level.active), level.activations.shape[2:]
        cams = level.activations.new_zeros(
            (examples, 1 if settings.attr_dim_summation else channels, height, width)
        )
        deltas = level.activations.new_zeros((examples,))
        used = torch.zeros((examples,), dtype=torch.long, device=device)
        while level.active:
            plain = trapezoid_sum(level.activations, level.gradients, relu_gradients=False)
            gap = plain.sum(dim=(1, 2, 3)) - level.rise
            if 2 * level.n_steps > settings.max_steps:
                stops = [True] * len(level.active)
            else:  # the one host synchronisation of a level
                stops = (gap.abs() <= settings.tolerance * level.rise.abs()).tolist()
            stopping = [i for i, stop in enumerate(stops) if stop]
            if stopping:
                chosen = torch.tensor(stopping, dtype=torch.long, device=device)
                acts, grads = level.activations[:, chosen], level.gradients[:, chosen]
                relu = settings.variant == "relu_gradients"
                rsi = trapezoid_sum(acts, grads, relu_gradients=True) if relu else plain[chosen]
                where = torch.tensor(
                    [level.active[i] for i in stopping], dtype=torch.long, device=device
                )
                cams[where] = cam_from_rsi(rsi, acts[-1], acts[0], settings)
                deltas[where] = gap[chosen]
                used[where] = level.n_steps
            refining = [i for i, stop in enumerate(stops) if not stop]
            if not refining:
                break
            del plain, gap
            if stopping:
                level.keep(refining, settings.per_example)
            self._refine(level)
        return cams, deltas, used

    def _first_level(self, group: Group) -> Level:
        """The points of ``m = 4``, run from the input down (the first pass fixes the
        class of ``target=None``) and stored in ascending order."""
        n_steps, examples = AUTO_START_STEPS, group.inputs[0].shape[0]
        activations: torch.Tensor | None = None
        gradients: torch.Tensor | None = None
        at_input: torch.Tensor | None = None
        at_baseline: torch.Tensor | None = None
        classes: torch.Tensor | None = None
        descending = list(range(n_steps, -1, -1))
        for steps in step_passes(descending, examples, self.settings.internal_batch_size):
            acts, grads, scores, classes = self._run_pass(group, steps, n_steps, classes)
            if activations is None or gradients is None:
                activations = acts.new_empty((n_steps + 1, *acts.shape[1:]))
                gradients = grads.new_empty((n_steps + 1, *grads.shape[1:]))
                at_input = scores[0]
            activations[steps[-1] : steps[0] + 1] = acts.flip(0)
            gradients[steps[-1] : steps[0] + 1] = grads.flip(0)
            if steps[-1] == 0:
                at_baseline = scores[-1]
        if activations is None or gradients is None or at_input is None:
            raise RuntimeError("the first level of n_steps='auto' ran no pass")
        if at_baseline is None:
            raise RuntimeError("the first level of n_steps='auto' missed the baseline")
        rise = (at_input - at_baseline).to(activations.dtype)
        return Level(n_steps, activations, gradients, group, rise, classes, list(range(examples)))

    def _refine(self, level: Level) -> None:
        """Double ``level.n_steps``: the old points stay, the new midpoints are run."""
        level.double()
        midpoints = list(range(1, level.n_steps, 2))
        rows_per_pass = self.settings.internal_batch_size
        for steps in step_passes(midpoints, len(level.active), rows_per_pass):
            acts, grads, _, _ = self._run_pass(level.group, steps, level.n_steps, level.classes)
            level.activations[steps[0] : steps[-1] + 1 : 2] = acts
            level.gradients[steps[0] : steps[-1] + 1 : 2] = grads

    def _run_pass(
        self, group: Group, steps: list[int], n_steps: int, classes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Activations and gradients ``(len(steps), examples, C, h, w)`` (float32 or wider),
        detached scores ``(len(steps), examples)`` and the classes of one pass."""
        settings, examples = self.settings, group.inputs[0].shape[0]
        points = path_points(group.inputs, group.baselines, steps, n_steps)
        _, pass_args = expand_for_steps(None, group.args, len(steps), settings.per_example)
        # in the inputs' precision, also under autocast (see the design notes)
        with torch.autocast(points[0].device.type, enabled=False):
            output, leaf = self.tap.run(self.forward_func, points, pass_args)
            with torch.enable_grad():
                scores, classes = select_scores(
                    settings.transform(output), group.target, classes, examples, len(steps)
                )
            gradient = self.tap.gradient(scores, settings.grad_kwargs)
        activations = as_maps(leaf.detach(), settings.reshape_transform, len(steps), examples)
        gradients = as_maps(gradient, settings.reshape_transform, len(steps), examples)
        self.bar.update(len(steps))  # host-only
        return activations, gradients, scores.detach().reshape(len(steps), examples), classes


def select_scores(
    output: torch.Tensor, target: TargetType, classes: torch.Tensor | None, group: int,
    n_points: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One score per row of a step-major pass of ``n_points * group`` rows, and the classes.

    The class of each example is resolved once, on the first pass, whose first ``group``
    rows are the real inputs; target callables score every row.
    """
    if output.dim() == 0 or output.shape[0] != n_points * group:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)} for a pass of "
            f"{n_points * group} input rows; its output must keep the batch in dim 0"
        )
    if output.dim() != 2 or is_score_target(target):
        expanded, _ = expand_for_steps(target, None, n_points)
        return target_scores(output, expanded), classes
    if classes is None:
        classes = class_indices(output[:group], target)
    return output.gather(1, classes.repeat(n_points)[:, None])[:, 0], classes


def as_maps(
    values: torch.Tensor, reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
    n_points: int, group: int,
) -> torch.Tensor:
    """Layer values ``(points*group, ...)`` as float maps ``(points, group, C, h, w)``."""
    if reshape_transform is not None:
        values = reshape_transform(values)
    if values.dim() != 4:
        hint = "" if reshape_transform is not None else "; pass a reshape_transform"
        raise ValueError(
            "the layer's activation must have shape (batch, channels, height, width), got "
            f"shape {tuple(values.shape)}{hint}"
        )
    accumulate = torch.promote_types(values.dtype, torch.float32)
    return values.to(accumulate).reshape(n_points, group, *values.shape[1:])
