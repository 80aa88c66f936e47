"""Guided-gradient alignment training (Torres Figueroa et al., arXiv 2404.15024).

The training loss is ``CE(f(x), y) + weight * L_R`` with
``L_R = mean_i d(g_i, g_G,i)``, where ``g = dS_t/dx`` is the plain input gradient of
the target-class logit (kept differentiable: double backpropagation trains the weights
through it) and ``g_G`` is the guided-backprop gradient of the same logit, a fixed
(detached) target. The paper's best setting is the cosine distance
``1 - cos(g, g_G)`` with ``weight = 7.5e-3``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from captum_regularized._internal.captum_compat import format_additional_args
from captum_regularized._internal.checks import check_autograd_available
from captum_regularized._internal.guided_relu import (
    check_not_compiled,
    guided_and_plain_gradients,
)
from captum_regularized._internal.input_gradients import (
    check_class_logits,
    check_training_batch,
)
from captum_regularized._internal.model_state import batchnorm_statistics_restored_on_error

__all__ = ["GuidedGradientRegularizer"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance(g, g_guided) -> (B,)`` per-example loss."""

_EPS = 1e-12


def _unit_rows(gradient: torch.Tensor) -> torch.Tensor:
    """Per-example gradients flattened to rows of unit L2 norm (float32 or wider)."""
    flat = gradient.flatten(1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _cosine_distance(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
    return 1 - (_unit_rows(g) * _unit_rows(g_guided)).sum(1)


def _l1_distance(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
    return (_unit_rows(g) - _unit_rows(g_guided)).abs().mean(1)


def _mse_distance(g: torch.Tensor, g_guided: torch.Tensor) -> torch.Tensor:
    return (_unit_rows(g) - _unit_rows(g_guided)).square().mean(1)


_DISTANCES: dict[str, Distance] = {
    "cosine": _cosine_distance,
    "l1": _l1_distance,
    "mse": _mse_distance,
}


@contextlib.contextmanager
def _batchnorm_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm normalises with batch statistics but leaves its buffers alone."""
    switched = [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.training
        and module.track_running_stats
    ]
    try:
        for module in switched:
            module.track_running_stats = False
        yield
    finally:
        for module in switched:
            module.track_running_stats = True


def _is_per_example(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def _check_per_example_loss(loss: Any, count: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.shape != (count,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"distance must return one loss per regularised example, shape ({count},); "
            f"got {got}"
        )


def _logits_at(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, classes.to(logits.device, torch.long)[:, None])[:, 0]


class GuidedGradientRegularizer:
    r"""Penalise the misalignment of the plain input gradient with guided backprop.

    A training-loss hook: ``logits, penalty = reg(inputs, labels)`` and the training
    loss is ``cross_entropy(logits, labels) + penalty``. The penalty is
    ``weight * mean_i distance(g_i, g_G,i)`` where ``g_i`` is the input gradient of the
    target logit of example ``i`` (differentiable, so the penalty trains the weights by
    double backpropagation) and ``g_G,i`` the guided-backprop gradient of the same logit
    (``captum.attr.GuidedBackprop(model).attribute(inputs, target)``, see Notes; detached).

    One forward pass serves the logits and both gradients: the guided rule is switched
    on only for the guided backward pass, so BatchNorm running statistics move exactly
    once per step, as in plain training. Functional ReLUs (``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and their in-place forms) get the guided rule too, unlike in Captum.

    The caller's autograd graph is kept: with ``reg(pre(images), labels)`` the logits and
    the penalty back-propagate into a trainable ``pre`` exactly as the same loss written
    with plain autograd on the composed model would. Non-finite inputs are refused before
    any forward pass, and the model's BatchNorm statistics are left as found on error.

    Parameters
    ----------
    model : nn.Module
        A ReLU classifier returning ``(B, C)`` logits; it may be wrapped in
        ``DistributedDataParallel``. Not ``torch.compile``'d (compiled graphs cannot be
        differentiated twice; pass ``compiled._orig_mod``).
    weight : float
        Multiplies the mean distance (the paper's best: ``7.5e-3`` with cosine); finite
        and ``>= 0``.
    distance : {"cosine", "l1", "mse"} or callable
        ``"cosine"``: ``1 - cos(g, g_G)``. ``"l1"`` / ``"mse"``: mean absolute / squared
        difference of the per-example gradients scaled to unit L2 norm (so the weight
        does not depend on the model's gradient scale; note ``mse = 2 (1 - cos) / D``
        for ``D`` input values). A callable gets ``(g, g_guided)`` of the input's shape
        and returns a ``(B,)`` per-example loss.
    target : {"label", "predicted"}
        Regularise the gradient of the given label's logit or of the predicted class.
    fraction : float in (0, 1]
        Regularise a random subset of ``round(fraction * B)`` examples (at least one),
        a cost knob. The logits still cover the whole batch. Below 1 the subset takes a
        second forward pass whose train-mode BatchNorm layers use the subset's batch
        statistics without updating their running statistics (they still move once).
        As in PyTorch, a train-mode BatchNorm layer refuses a subset (or batch) with one
        value per channel, e.g. one example through ``nn.BatchNorm1d``.

    Attributes
    ----------
    last_cosine : Tensor or None
        Mean ``cos(g, g_G)`` over the regularised examples of the last call, a detached
        0-d tensor on the model's device (no host sync), for logging.

    Notes
    -----
    The gradients are per-example, as the paper defines them. In train mode, BatchNorm
    normalises with the batch's statistics, and the gradient of the *summed* target
    logits (what Captum computes) would mix every other example's logit into ``g_i``
    through them -- a term as large as ``g_i`` itself for small batches, and alignment
    learned on it does not carry over to eval mode. The regularizer therefore holds the
    batch statistics of ``nn.BatchNorm*`` layers constant in its two gradient passes
    (forward values, running statistics and the training loss's own backward pass are
    unchanged). In eval mode ``g_G`` equals ``GuidedBackprop(model).attribute``; in
    train mode it equals ``GuidedBackprop`` on an eval-mode copy whose running
    statistics are the batch's. ``SyncBatchNorm`` layers keep their batch coupling.

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4)
    >>> reg = GuidedGradientRegularizer(model, weight=7.5e-3)
    >>> images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    >>> logits, penalty = reg(images, labels)
    >>> loss = F.cross_entropy(logits, labels) + penalty
    >>> loss.backward()
    >>> logits.shape, penalty.dim(), bool(-1 <= reg.last_cosine <= 1)
    (torch.Size([4, 3]), 0, True)
    """

    def __init__(
        self,
        model: nn.Module,
        weight: float = 7.5e-3,
        distance: str | Distance = "cosine",
        target: str = "label",
        fraction: float = 1.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_not_compiled(model)
        if isinstance(weight, bool) or not isinstance(weight, (int, float, numbers.Real)):
            raise TypeError(f"weight must be a number, got {type(weight).__name__}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if isinstance(distance, str):
            if distance not in _DISTANCES:
                raise ValueError(
                    f"distance must be one of {sorted(_DISTANCES)} or a callable, got {distance!r}"
                )
            self._distance = _DISTANCES[distance]
        elif callable(distance):
            self._distance = distance
        else:
            raise TypeError(
                f"distance must be a string or a callable, got {type(distance).__name__}"
            )
        if target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
        number = isinstance(fraction, (int, float, numbers.Real)) and not isinstance(fraction, bool)
        if not number or not 0 < fraction <= 1:  # NaN fails the comparison too
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.model = model
        self.weight = float(weight)
        self.distance = distance
        self.target = target
        self.fraction = float(fraction)
        self.last_cosine: torch.Tensor | None = None

    def __repr__(self) -> str:
        distance = self.distance if isinstance(self.distance, str) else "<callable>"
        return (
            f"{type(self).__name__}(weight={self.weight}, distance={distance!r}, "
            f"target={self.target!r}, fraction={self.fraction})"
        )

    def __call__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        additional_forward_args: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, penalty)`` for one training batch.

        Parameters
        ----------
        inputs : Tensor
            Images ``(B, ...)``, floating point, on the model's device.
        labels : Tensor
            Integer class labels ``(B,)``.
        additional_forward_args : Any
            Passed to the model after ``inputs``; per-example tensors follow the subset
            when ``fraction < 1``.

        Returns
        -------
        tuple of Tensor
            The logits ``(B, C)`` and the weighted penalty (0-d), both with their graph
            down to the caller's: when ``inputs`` come out of trainable modules
            (``reg(pre(x), labels)``), the training loss back-propagates into them too,
            exactly as through the composed model.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``; for a model that modifies its input in
            place.
        TypeError
            Non-floating ``inputs``; labels that are not an integer tensor.
        ValueError
            NaN or infinite ``inputs`` (checked before any forward pass); labels not of
            shape ``(B,)`` or outside ``[0, C - 1]`` (``-100``, cross-entropy's
            ``ignore_index``, included); logits not ``(B, C)``; a train-mode BatchNorm
            layer seeing one value per channel (PyTorch's own refusal); no ReLU.
            BatchNorm running statistics are left as found whenever it raises.
        """
        check_autograd_available(type(self).__name__)
        check_training_batch(inputs, labels, class_indices=True)
        batch = inputs.shape[0]
        count = max(1, min(batch, round(self.fraction * batch)))
        with batchnorm_statistics_restored_on_error(self.model):
            if count == batch:
                logits, plain, guided = guided_and_plain_gradients(
                    self.model,
                    inputs,
                    additional_forward_args=additional_forward_args,
                    create_graph=True,
                    per_example=True,
                    score_fn=lambda output: self._scores(output, labels),
                )
            else:
                logits, plain, guided = self._subset_gradients(
                    inputs, labels, additional_forward_args, count
                )
            per_example = self._distance(plain, guided)
            _check_per_example_loss(per_example, plain.shape[0])
        self.last_cosine = (
            (_unit_rows(plain.detach()) * _unit_rows(guided)).sum(1).mean().detach()
        )
        return logits, self.weight * per_example.mean()

    def _subset_gradients(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        additional_forward_args: Any,
        count: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = format_additional_args(additional_forward_args)
        logits = self.model(inputs, *(args or ()))
        check_class_logits(logits, labels)
        batch = inputs.shape[0]
        rows = torch.randperm(batch, device=inputs.device)[:count]
        chosen = labels if self.target == "label" else logits.detach().argmax(1)
        subset_args = None
        if args is not None:
            subset_args = tuple(
                arg[rows] if _is_per_example(arg, batch) else arg for arg in args
            )
        with _batchnorm_statistics_frozen(self.model):
            _, plain, guided = guided_and_plain_gradients(
                self.model,
                inputs[rows],
                additional_forward_args=subset_args,
                create_graph=True,
                per_example=True,
                score_fn=lambda output: _logits_at(output, chosen[rows]),
            )
        return logits, plain, guided

    def _scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_class_logits(logits, labels)
        classes = labels if self.target == "label" else logits.detach().argmax(1)
        return _logits_at(logits, classes)

