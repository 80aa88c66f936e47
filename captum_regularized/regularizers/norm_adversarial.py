"""Norm-regularized adversarial training (Gong, Dou & Farnia, CVPR 2024, arXiv 2404.04647)."""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Literal

import torch
from torch import nn

from captum_regularized._internal.checks import check_autograd_available, check_same_device
from captum_regularized._internal.input_gradients import (
    PerExampleLoss,
    check_training_batch,
    cross_entropy_per_example,
    input_gradient,
    per_example_losses,
)
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import (
    batchnorm_statistics_restored_on_error,
    kept_batchnorm_statistics,
    preserved_model,
    unwrap_parallel,
)
from captum_regularized.regularizers.adversarial_norms import adversarial_norm
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

__all__ = ["NormRegularizedAdversarialLoss"]

_DEFAULT_STEP_FACTOR = 2.5
"""Default step size: ``2.5 * radius / steps`` (Madry et al.'s PGD rule)."""

_SELECTIONS = ("last", "best")
"""Values of ``select_iterate``: the solver's last iterate, or each example's best."""

_STARTS = ("closed_form", "zero")
"""Values of ``start``: the closed-form maximiser (ours) or ``delta = 0`` (the authors')."""


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_settings(
    step_size: Any, clean_weight: Any, input_range: Any
) -> tuple[float | None, float, tuple[float, float] | None]:
    """Validate the float settings (NaN must not slip through a ``not x > 0`` test)."""
    if step_size is not None:
        if not _is_real(step_size):
            raise TypeError(
                f"step_size must be a number or None, got {type(step_size).__name__}"
            )
        if not math.isfinite(step_size) or step_size <= 0:
            raise ValueError(
                f"step_size must be a finite number > 0 (or None for the default), "
                f"got {step_size}"
            )
        step_size = float(step_size)
    if not _is_real(clean_weight):
        raise TypeError(f"clean_weight must be a number, got {type(clean_weight).__name__}")
    if not 0.0 <= clean_weight <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"clean_weight must lie in [0, 1], got {clean_weight}")
    bounds = None
    if input_range is not None:
        try:
            lo, hi = input_range
        except (TypeError, ValueError):
            lo = hi = None
        if not (_is_real(lo) and _is_real(hi)):
            raise TypeError(f"input_range must be a pair of numbers (lo, hi), got {input_range!r}")
        lo, hi = float(lo), float(hi)
        if not lo < hi:  # NaN fails the comparison too; infinite bounds clamp one side
            raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {input_range}")
        bounds = (lo, hi)
    return step_size, float(clean_weight), bounds


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class NormRegularizedAdversarialLoss:
    r"""Training loss of norm-regularized adversarial training.

    Trains ``min_theta mean_i max_delta [l(f(x_i + delta), y_i) - R(delta)]``. To first
    order the inner maximum is ``l(x) + R*(grad_x l)``, so the adversary's cost ``R``
    turns into a penalty ``R*`` on the model's simple-gradient map, which makes those
    maps structured: ``"l1"`` gives sparse maps, ``"group"`` maps sparse over
    ``group_size x group_size`` patches, ``"elastic_net"`` sparse and smooth ones,
    ``"gaze"`` maps that stay inside a given mask. Each norm is one class of
    :mod:`~captum_regularized.regularizers.adversarial_norms`:

    =============== ================================= ================================
    norm            penalty on the gradient ``R*(g)`` closed-form adversary ``delta*``
    =============== ================================= ================================
    ``l1``          ``eps ||g||_1``                   ``eps sign(g)``
    ``elastic_net`` ``eps ||g||_1 + eps2 ||g||^2``    ``eps sign(g) + 2 eps2 g``
    ``group``       ``eps sum_G ||g_G||_2``           ``eps g_G / ||g_G||_2``
    ``gaze``        ``eps sum (1-2M) g^2 / ||g||``    ``eps (1 - 2M) g / ||g||_2``
    =============== ================================= ================================

    Here ``g = grad_{x_i} l(f(x_i), y_i)`` is each example's own loss gradient (not
    divided by the batch size). As in the paper, the model is trained on the
    adversarial examples only (``delta`` detached); ``clean_weight`` mixes in the
    clean loss. :class:`~captum_regularized.regularizers.GradientNormPenalty` adds
    ``R*(g)`` directly instead (double back-propagation).

    The inner solver takes ``steps`` forward and backward passes (the cost of Captum's
    ``PGD`` with ``step_num=steps``, of ``FGSM`` for one step): from the closed form
    ``delta*`` (``start="closed_form"``, ours) or from 0 (``start="zero"``, the
    authors' loop), steepest-ascent steps of ``l - R`` projected onto the feasible set,
    keeping the last iterate or each example's best. The authors' ``l1`` setting is
    ``start="zero"``, ``step_size=0.3 * epsilon`` and ``update_batchnorm=True``. The
    inner passes run the model in its current mode and touch no ``.grad``; BatchNorm
    statistics are left as found when a call raises. Details:
    :doc:`/design_notes/adversarial_training`.

    Parameters
    ----------
    model : nn.Module
        The classifier being trained (maps inputs to logits).
    norm : {"l1", "elastic_net", "group", "gaze"}
        The structure to encourage.
    epsilon : float
        Adversary radius ``eps`` (``eps1`` of the elastic net), finite and ``>= 0``.
    epsilon2 : float
        The elastic net's ``eps2 > 0`` (finite); must be 0 for the other norms.
    steps : int
        Forward and backward passes of the inner solver, ``>= 1`` (see ``start``).
    step_size : float, optional
        Ascent step length (absolute), finite and ``> 0``. Default ``2.5 * epsilon /
        steps`` (``l1``, ``group``) and ``2.5 * ||delta_closed_form||_2 / steps`` per
        example (``elastic_net``). The authors' ``l1`` setting is
        ``step_size=0.3 * epsilon`` (with ``start="zero"``).
    group_size : int
        Side of the square patches of ``"group"`` (per channel). When it does not divide
        the image side, the last row/column of patches is smaller (the remainder).
    clean_weight : float
        Weight ``w`` in ``(1 - w) * adversarial loss + w * clean loss``; 0 (default) is
        the authors' setting.
    input_range : (float, float), optional
        Clamp ``x + delta`` to ``[lo, hi]`` (``lo < hi``; an infinite bound leaves that
        side open).
    select_iterate : {"last", "best"}
        Which iterate of the iterative solver ``delta`` is: the last one (default; the
        cost of Captum's ``PGD``) or each example's best one (one extra forward pass);
        see above. Ignored for ``steps=1`` with ``start="closed_form"``.
    loss_fn : callable, optional
        ``loss_fn(logits, labels) -> (B,)`` per-example losses; default unreduced
        cross-entropy, whose labels must be class indices ``(B,)`` in ``[0, C - 1]``
        (``ignore_index=-100`` is refused). With a custom ``loss_fn`` the labels are
        whatever it takes (only their batch dim is checked). The training loss is its
        mean.
    start : {"closed_form", "zero"}
        Where the inner solver starts: the closed-form maximiser (default) or
        ``delta = 0`` (the authors' loop); see above. ``"zero"`` needs an iterative norm
        (not ``"gaze"``).
    update_batchnorm : bool
        ``True``: the inner passes update the running statistics of train-mode
        BatchNorm layers as ordinary train-mode forward passes do (the authors' way).
        ``False`` (default): they leave them as they were. No effect in eval mode.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4)
    >>> adv = NormRegularizedAdversarialLoss(model, norm="l1", epsilon=0.01)
    >>> images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    >>> delta = adv.perturb(images, labels)
    >>> bool(delta.abs().max() <= 0.01), delta.requires_grad
    (True, False)
    >>> out = adv(images, labels)  # a RegularizerOutput: (logits, penalty) and .loss
    >>> out.logits.shape, out.loss.dim(), out.loss.requires_grad
    (torch.Size([4, 3]), 0, True)

    Seven ascent steps, each example keeping its best iterate:

    >>> best = NormRegularizedAdversarialLoss(model, epsilon=0.01, steps=7,
    ...                                       select_iterate="best")
    >>> best.perturb(images, labels).shape
    torch.Size([4, 3, 16, 16])

    The authors' inner loop (``l1``: ten steps of ``0.3 * epsilon`` from 0, BatchNorm
    statistics updated by every inner pass):

    >>> authors = NormRegularizedAdversarialLoss(model, epsilon=0.01, steps=10,
    ...                                          step_size=0.3 * 0.01, start="zero",
    ...                                          update_batchnorm=True)
    >>> bool(authors.perturb(images, labels).abs().max() <= 0.01)
    True
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "l1",
        epsilon: float = 0.01,
        epsilon2: float = 0.0,
        steps: int = 1,
        step_size: float | None = None,
        group_size: int = 14,
        clean_weight: float = 0.0,
        input_range: tuple[float, float] | None = None,
        loss_fn: PerExampleLoss | None = None,
        select_iterate: Literal["last", "best"] = "last",
        start: Literal["closed_form", "zero"] = "closed_form",
        update_batchnorm: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.spec = adversarial_norm(norm, epsilon, epsilon2, group_size)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not self.spec.iterative and steps != 1:
            raise ValueError(f"norm={norm!r} has only the closed form; use steps=1")
        step_size, clean_weight, bounds = _check_settings(step_size, clean_weight, input_range)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.select_iterate = _check_choice("select_iterate", select_iterate, _SELECTIONS)
        self.start = _check_choice("start", start, _STARTS)
        if start == "zero" and not self.spec.iterative:
            raise ValueError(
                f"start='zero' starts the iterative solver at delta = 0, but norm={norm!r} "
                "has only the closed form; use start='closed_form'"
            )
        if not isinstance(update_batchnorm, bool):
            raise TypeError(
                f"update_batchnorm must be a bool, got {type(update_batchnorm).__name__}"
            )
        self.model = model
        self.steps = steps
        self.step_size = step_size
        self.clean_weight = clean_weight
        self.input_range = bounds
        self.update_batchnorm = update_batchnorm
        self.loss_fn: PerExampleLoss = loss_fn or cross_entropy_per_example
        self._class_labels = loss_fn is None

    @property
    def norm(self) -> str:
        """The chosen norm."""
        return self.spec.norm

    def perturb(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The adversary's perturbation ``delta`` (detached, shape of ``inputs``).

        Parameters
        ----------
        inputs : Tensor
            Batch of inputs ``(B, ...)``; ``(B, C, H, W)`` for ``"group"``.
        labels : Tensor
            Their labels (whatever ``loss_fn`` takes; class indices by default).
        mask : Tensor, optional
            Required for ``"gaze"`` (values in ``[0, 1]``, shape of ``inputs`` with
            size-1 dims allowed, e.g. ``(B, 1, H, W)``); rejected otherwise.

        Returns
        -------
        Tensor
            ``delta`` with ``x + delta`` already clamped to ``input_range``.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``.
        TypeError
            Non-floating ``inputs``; with the default loss, labels that are not an
            integer tensor.
        ValueError
            NaN or infinite ``inputs`` (before any forward pass); labels of the wrong
            length; with the default loss, labels not ``(B,)`` or outside
            ``[0, C - 1]`` (``-100``, cross-entropy's ``ignore_index``, is refused
            rather than averaged in as a zero loss); a bad ``mask``.

        Examples
        --------
        >>> model = torch.nn.Linear(4, 2)
        >>> adv = NormRegularizedAdversarialLoss(model, norm="elastic_net", epsilon=0.1,
        ...                                      epsilon2=0.05, steps=3)
        >>> adv.perturb(torch.rand(5, 4), torch.zeros(5, dtype=torch.long)).shape
        torch.Size([5, 4])
        """
        check_autograd_available(f"{type(self).__name__}.perturb")
        mask = self._check_call(inputs, labels, mask)
        with batchnorm_statistics_restored_on_error(self.model):
            return self._perturbation(inputs, labels, mask)[0]

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> RegularizerOutput:
        """The batch's :class:`RegularizerOutput`: ``(logits, penalty)`` and ``.loss``.

        ``.loss`` is the training loss: the mean loss on ``inputs + delta`` (mixed with the
        clean loss by ``clean_weight``). ``logits`` are the model's (detached) logits at
        ``inputs`` from the solver's first pass and ``penalty = loss - task loss(logits)``,
        the adversarial excess, which is ``R*(g)`` to first order. ``delta`` is a constant,
        but ``inputs`` keep the caller's graph: with ``adv(pre(images), labels).loss`` the
        loss back-propagates into a trainable ``pre`` through ``pre(images) + delta``.
        Arguments and errors as in :meth:`perturb`.

        Examples
        --------
        >>> model = torch.nn.Linear(4, 2)
        >>> adv = NormRegularizedAdversarialLoss(model, epsilon=0.1, clean_weight=0.5)
        >>> logits, penalty = adv(torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
        >>> logits.shape, penalty.dim()
        (torch.Size([5, 2]), 0)
        """
        check_autograd_available(type(self).__name__)
        mask = self._check_call(inputs, labels, mask)
        with batchnorm_statistics_restored_on_error(self.model):
            delta, clean_logits = self._perturbation(inputs, labels, mask)
            adversarial = logits_of(self.model(inputs + delta), "model")
            loss = per_example_losses(self.loss_fn, adversarial, labels).mean()
            if self.clean_weight > 0:
                logits = logits_of(self.model(inputs), "model")
                clean = per_example_losses(self.loss_fn, logits, labels).mean()
                loss = (1 - self.clean_weight) * loss + self.clean_weight * clean
        task_loss = per_example_losses(self.loss_fn, clean_logits, labels).mean()
        return RegularizerOutput(clean_logits, loss - task_loss, loss=loss)

    def _check_call(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        check_training_batch(
            inputs, labels, class_indices=self._class_labels, model=unwrap_parallel(self.model)
        )
        check_same_device((inputs,), unwrap_parallel(self.model))
        return self.spec.check_mask(mask, inputs)

    def _perturbation(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The detached ``delta`` and the detached logits at ``inputs``."""
        inner = unwrap_parallel(self.model)
        statistics = (
            contextlib.nullcontext() if self.update_batchnorm else kept_batchnorm_statistics(inner)
        )
        with preserved_model(inner), statistics:
            delta, clean_logits = self._solve(inner, inputs.detach(), labels, mask)
        return delta.detach(), clean_logits.detach()

    def _feasible(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        delta = self.spec.project(delta)
        if self.input_range is not None:
            delta = (x + delta).clamp(*self.input_range) - x
        return delta

    def _step(
        self, x: torch.Tensor, closed_form: torch.Tensor
    ) -> float | torch.Tensor:
        """The ascent step: ``step_size``, or the default from the (feasible) closed form."""
        if self.step_size is not None:
            return self.step_size
        radius = self.spec.step_radius(self._feasible(x, closed_form))
        return (_DEFAULT_STEP_FACTOR / self.steps) * radius

    def _keep_better(
        self,
        losses: torch.Tensor,
        delta: torch.Tensor,
        best: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example, ``(delta, its objective)`` where it beats ``best``, else ``best``."""
        value = losses.detach() - self.spec.adversary_cost(delta)
        if best is None:
            best = (delta, torch.full_like(value, -math.inf))
        best_delta, best_value = best
        better = value > best_value
        shape = (-1,) + (1,) * (delta.dim() - 1)
        return torch.where(better.reshape(shape), delta, best_delta), torch.where(
            better, value, best_value
        )

    def _solve(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``delta`` and the logits of the first pass, which is at ``x``."""
        clean_logits: torch.Tensor | None = None
        if self.start == "closed_form":
            first = input_gradient(model, x, labels, self.loss_fn)
            clean_logits = first.logits
            closed_form = self.spec.closed_form_maximiser(first.gradient, mask)
            delta = self._feasible(x, closed_form)
            if self.steps == 1:
                return delta, clean_logits
            step: float | torch.Tensor | None = self._step(x, closed_form)
            ascents = self.steps - 1
        else:  # the first pass, at x + 0, gives the first ascent step
            delta, step, ascents = torch.zeros_like(x), None, self.steps
        keep_best = self.select_iterate == "best"
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for _ in range(ascents):
            current = input_gradient(model, x + delta, labels, self.loss_fn)
            if clean_logits is None:
                clean_logits = current.logits
            if step is None:
                step = self._step(x, self.spec.closed_form_maximiser(current.gradient, mask))
            if keep_best:  # the pass that gives this step also scores the iterate it leaves
                best = self._keep_better(current.losses, delta, best)
            direction = current.gradient - self.spec.adversary_cost_gradient(delta)
            delta = self._feasible(x, delta + self.spec.ascent_step(direction, step))
        assert clean_logits is not None  # steps >= 1, so the loop ran at least once
        if not keep_best:
            return delta, clean_logits  # Captum's PGD cost: one forward and backward per step
        with torch.no_grad():  # only the last iterate needs a forward pass of its own
            losses = per_example_losses(self.loss_fn, logits_of(model(x + delta), "model"), labels)
        return self._keep_better(losses, delta, best)[0], clean_logits
