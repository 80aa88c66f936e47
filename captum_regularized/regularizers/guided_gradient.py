"""Guided-gradient alignment training (Torres Figueroa et al., arXiv 2404.15024).

The training loss is ``CE(f(x), y) + weight * L_R`` with
``L_R = mean_i d(g_i, g_G,i)``, where ``g = dS_t/dx`` is the plain input gradient of
the target-class logit (kept differentiable: double backpropagation trains the weights
through it) and ``g_G`` is the guided-backprop gradient of the same logit, a fixed
(detached) target. The paper's best setting is the cosine distance
``1 - cos(g, g_G)`` with ``weight = 7.5e-3``. Besides exact double backpropagation, the
weights can be trained through the penalty by a finite difference of first-order
gradients (``mode="finite_difference"``), for models that cannot be differentiated twice;
the default, ``mode="auto"``, takes the exact mode where the model allows it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from captum_regularized._internal.batch_args import is_per_example
from captum_regularized._internal.captum_compat import format_additional_args
from captum_regularized._internal.guided_relu import (
    check_guided_rule,
    check_not_scripted,
    guided_and_plain_gradients,
)
from captum_regularized._internal.input_gradients import check_class_logits
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import kept_batchnorm_statistics, unwrap_parallel
from captum_regularized._internal.per_example_batchnorm import (
    Moments,
    TrainBatchNormCalls,
    batch_moments,
    normalised,
)
from captum_regularized.regularizers._penalty_modes import (
    GradientScaler,
    InputGradientPenalty,
    finite_difference_penalty,
    penalty_and_direction,
    without_penalty_gradient,
)

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


def _check_per_example_loss(loss: Any, count: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.shape != (count,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"distance must return one loss per regularised example, shape ({count},); "
            f"got {got}"
        )


def _logits_at(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, classes.to(logits.device, torch.long)[:, None])[:, 0]


def _is_compiled(module: nn.Module) -> bool:
    return hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None


def _eager_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The model's forward pass without a top-level ``torch.compile`` (for the guided pass).

    The guided rule is a torch function mode that compiled graphs do not see; the
    finite-difference mode runs its guided pass eagerly and everything else compiled.
    Compiled *submodules* would hide their activations, so they are refused.
    """
    module = unwrap_parallel(model)
    module = getattr(module, "_orig_mod", module)
    forward: Callable[..., torch.Tensor] = module
    if getattr(module, "_compiled_call_impl", None) is not None:  # module.compile()
        eager_call = module._call_impl

        def forward(*args: Any) -> torch.Tensor:
            return eager_call(*args)

    for name, submodule in module.named_modules():
        if name and _is_compiled(submodule):
            raise TypeError(
                f"model.{name} is a torch.compile'd submodule; the guided rule cannot reach "
                "the activations inside a compiled graph. Compile the whole model instead "
                "(mode='finite_difference' runs its guided pass on the uncompiled model)"
            )
    return forward


class _MomentsGradient(torch.autograd.Function):
    """``0`` whose gradient in a BatchNorm input ``a`` is that of ``<dm, mean(a)> + <dv, var(a)>``.

    Attached to each train-mode BatchNorm input of the caller's pass, it carries the
    held statistics' share of the finite-difference weight gradient (``dm``, ``dv``:
    the perturbed pass's gradients with respect to them) through the statistics'
    dependence on the weights. ``a`` is saved by BatchNorm anyway; the backward pass is
    one elementwise expression, ``dm / n + 2 dv (a - mean) / n`` per channel.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        a: torch.Tensor,
        d_mean: torch.Tensor,
        d_var: torch.Tensor,
        mean: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        ctx.save_for_backward(a, d_mean, d_var, mean)
        return torch.zeros((), dtype=dtype, device=a.device)

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        a, d_mean, d_var, mean = ctx.saved_tensors
        shape = [1, a.shape[1]] + [1] * (a.dim() - 2)
        count = a.numel() // a.shape[1]
        up = upstream.to(d_mean.dtype) / count
        wide = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        grad = (wide - mean.view(shape)) * (2 * up * d_var).view(shape) + (up * d_mean).view(shape)
        return grad.to(a.dtype), None, None, None, None


class _BatchStatistics(TrainBatchNormCalls):
    """What train-mode ``F.batch_norm`` calls normalise with in the finite-difference passes.

    The penalty uses per-example gradients: train-mode BatchNorm statistics held
    constant *in x*. A perturbed pass that normalised with its own statistics would
    estimate the derivative of the batch-coupled gradient instead, so:

    * ``"record"``: normalise as usual, keep each call's batch mean and variance
      (detached);
    * ``"hold"``: normalise with the statistics given in ``held``, one pair per call in
      order (leaves, so the pass can be differentiated with respect to them);
    * ``"inject"``: normalise as usual and attach a :class:`_MomentsGradient` to each
      input, from ``held`` = ``(d_mean, d_var)`` and ``means`` in order; their outputs
      are collected in ``injected``;
    * ``"reference_half"``: normalise the whole batch with the statistics of its second
      half (on the graph).
    """

    def __init__(
        self,
        action: str,
        held: list[Moments] | None = None,
        means: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.action = action
        self.statistics: list[Moments] = [] if held is None else held
        self.means = means or []
        self.injected: list[torch.Tensor] = []
        self.calls = 0

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        x = call["input"]
        self.calls += 1
        if self.action == "record":
            with torch.no_grad():
                self.statistics.append(batch_moments(x))
            return super().train_batch_norm(call)
        if self.action in ("hold", "inject") and self.calls > len(self.statistics):
            raise RuntimeError(_MISMATCH)
        if self.action == "hold":
            return self._normalised(x, self.statistics[self.calls - 1], call)
        if self.action == "inject":
            d_mean, d_var = self.statistics[self.calls - 1]
            mean = self.means[self.calls - 1]
            self.injected.append(_MomentsGradient.apply(x, d_mean, d_var, mean, d_mean.dtype))
            return super().train_batch_norm(call)
        return self._normalised(x, batch_moments(x[x.shape[0] // 2 :]), call)

    @staticmethod
    def _normalised(x: torch.Tensor, moments: Moments, call: dict[str, Any]) -> torch.Tensor:
        return normalised(x, moments, call["eps"], call["weight"], call["bias"])


_MISMATCH = (
    "the model ran a different number of train-mode BatchNorm layers in the passes of "
    "one finite-difference step (data-dependent control flow?); mode='finite_difference' "
    "needs the same layers in every pass over the same batch"
)


class GuidedGradientRegularizer(InputGradientPenalty):
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

    **Modes.** ``"auto"`` (the default) runs ``"double_backprop"`` where the model can be
    differentiated twice and ``"finite_difference"`` where it cannot; how it decides is
    in :mod:`captum_regularized.regularizers`, and ``reg.resolved_mode`` says which it
    took.

    ``"double_backprop"`` keeps ``g`` in the graph: exact, one
    forward pass, about 1.8x a plain step's memory. The forward pass runs with PyTorch's
    math attention kernel (``sdpa_kernel([SDPBackend.MATH])``; the fused kernels have no
    double backward); a model part without a second derivative (a custom
    ``autograd.Function`` with a ``@once_differentiable`` backward, an operator without
    a double backward) is named in a ``RuntimeError`` on the first call (a
    ``DoubleBackwardUnavailable``), and ``torch.compile``'d models are refused.

    ``"finite_difference"`` needs first derivatives only. With ``S`` the sum of the
    target logits (so ``g = grad_x S``) and ``v = dL_R/dg`` computed from the detached
    ``g`` and ``g_G``, the weight gradient of the penalty, ``(dg/dtheta)^T v``, is the
    forward difference ``[grad_theta S(x + h v) - grad_theta S(x)] / h``. A step runs
    the guided pass (first order, its graph freed), a pass at ``x + h v`` whose weight
    gradient is kept, and the caller's forward pass at ``x``, whose own backward pass
    subtracts the second term. The returned penalty has the exact value; its gradient
    is the estimate. ``h`` is one number per batch, chosen so that no example moves by
    more than ``fd_step`` times its own norm (default ``0.02``, ``sqrt(eps)`` under
    half-precision autocast). Forward rather than central differences: the caller's
    pass provides ``S(x)``, so a step costs one extra pass instead of two, and only one
    forward graph is alive at a time, plus one parameter-sized gradient that autograd
    then accumulates into in place (resnet18 at batch 16, 64x64: 1.35x a plain step's
    peak memory, against 1.81x for the exact mode; the ratio falls as activations
    outgrow the parameters). All passes draw
    the same dropout masks; the extra ones leave BatchNorm statistics and the random
    state as one forward pass does. Inputs from the caller's trainable modules are
    trained by the same difference of ``grad_x S``. ``torch.compile``'d models work:
    the caller's pass runs compiled, the guided pass (and, with train-mode BatchNorm,
    the pass at ``x + h v``) on the uncompiled module. On a ReLU
    network ``g`` is piecewise constant and ReLUs that switch between ``x`` and
    ``x + h v`` turn the difference quotient into a smoothed gradient rather than the
    exact one, which ignores them. In train mode the per-example gradients of the
    exact mode are kept (see Notes): the pass at ``x + h v`` normalises with the batch
    statistics of ``x``, held, and the caller's pass carries their dependence on the
    weights (a zero-valued term on each BatchNorm input whose backward adds it), so
    the difference is that of the same function at both ends. With ``fraction < 1``
    the guided pass runs on the subset; without train-mode BatchNorm the pass at
    ``x + h v`` does too, with it the subset at ``x`` runs beside it in one pass
    (normalised with its statistics) because the caller's pass normalises the whole
    batch -- a pass of twice the subset's size.

    Parameters
    ----------
    model : nn.Module
        A ReLU classifier returning ``(B, C)`` logits; it may be wrapped in
        ``DistributedDataParallel``. Not ``torch.compile``'d in
        ``mode="double_backprop"`` (compiled graphs cannot be differentiated twice;
        pass ``compiled._orig_mod``); compiled as a whole is fine for
        ``mode="finite_difference"`` (which ``"auto"`` then takes).
    weight : float
        Multiplies the mean distance; finite and ``>= 0``. The default ``7.5e-3`` is the
        paper's best with the cosine distance and costs no accuracy; over a short run
        its effect is small, ``0.03``--``0.1`` shows one sooner (see Notes, "Choosing
        the weight").
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
    mode : {"auto", "double_backprop", "finite_difference"}
        How the penalty's weight gradient is computed (see above); ``"auto"`` picks the
        exact mode where the model allows it.
    fd_step : float, optional
        ``mode="finite_difference"`` (or ``"auto"`` when it falls back) only: the
        relative step in ``(0, 1)``; ``None`` for ``max(0.02, sqrt(eps))`` of the
        compute dtype.
    rule : {"gated", "ungated"}
        The guided rule that makes the target ``g_G``, as in
        :class:`~captum_regularized.attr.GuidedBackprop`: ``"gated"`` (default)
        ``grad_in = sigma'(z) 1[z > 0] max(grad_out, 0)``, ``"ungated"``
        ``grad_in = sigma'(z) max(grad_out, 0)``. Both are Springenberg's rule on ReLU
        (and ReLU6) networks; they differ on smooth or leaky activations (SiLU, GELU,
        LeakyReLU, ...), whose negative side only ``"ungated"`` passes.
    grad_scaler : torch.amp.GradScaler, optional
        For mixed precision with loss scaling, PyTorch's gradient-penalty recipe: the
        scores are multiplied by the scaler's factor before the input gradients (and,
        finite-difference mode, the weight gradient at ``x + h v``) are taken, and the
        gradients are divided by it before the penalty, so half-precision gradients do
        not underflow. Pass the scaler that scales the training loss
        (``scaler.scale(loss).backward()``). In the finite-difference mode the weight
        gradient of ``S`` at ``x`` (and, in train mode, of the held BatchNorm
        statistics) is then taken in one more first-order pass too, and ``1/h``
        multiplies only the difference of the two, in the parameters' precision: no
        gradient in the backward pass through the logits is ``1/h`` larger than a
        plain step's, so the scaler finds no overflow a plain step would not (instead
        of settling ``h`` times lower). A disabled scaler is no scaler.

    Attributes
    ----------
    mode : str
        The mode asked for (``"auto"`` by default).
    resolved_mode : str or None
        The mode the calls run in: ``"double_backprop"`` or ``"finite_difference"``;
        for ``mode="auto"``, ``None`` until the first call has chosen.
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
    The finite-difference mode estimates the gradient of the same per-example penalty
    (statistics held in ``x``, their dependence on the weights kept, as in the exact
    mode); with ``fraction < 1`` and ``target="predicted"`` it takes the predicted
    class from the subset's pass. A model whose train-mode BatchNorm layers change
    between the passes of one step (data-dependent control flow) is refused.

    **Choosing the weight.** The distances do not depend on the input's scale or the
    model's gradient scale (``1 - cos`` lies in ``[0, 2]``; ``"l1"`` and ``"mse"`` compare
    unit-norm gradients), so the weight trades alignment directly against the
    cross-entropy (about ``ln C`` at the start, near 0 once the data are fitted) and
    needs no change when the inputs are rescaled or normalised. Start at the default,
    watch ``last_cosine`` (or :func:`~captum_regularized.metrics.gradient_alignment` on
    held-out images) and the held-out accuracy, and raise the weight by factors of 3
    until the cosine moves as much as you want at an accuracy you accept. Measured on
    the reference model, :class:`~captum_regularized.models.SimpleCNN` (default width
    16, and width 8) trained by :func:`~captum_regularized.models.train_classifier`
    (AdamW, lr ``3e-3``, batch 64, 10 epochs = 320 steps) on
    ``SyntheticShapes(num_samples=2000, image_size=32, seed=0)``, evaluated on 512
    held-out images (``seed=1``) in eval mode; cosine = mean
    :func:`~captum_regularized.metrics.gradient_alignment` of the label's logit:

    ==============  ===================  ======================
    weight          width 16: acc / cos  width 8: acc / cos
    ==============  ===================  ======================
    0 (no penalty)  100.0 % / 0.41       99.4 % / 0.36
    7.5e-3          100.0 % / 0.42       99.6 % / 0.37
    0.03            100.0 % / 0.45       99.4 % / 0.38
    0.1             100.0 % / 0.54       98.6 % / 0.44
    ==============  ===================  ======================

    (one seed each: accuracy differences below about 1 point are noise). The paper's
    weight is kept as the default; a short run that should show the effect takes
    ``0.1``.

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
        *,
        mode: str = "auto",
        fd_step: float | None = None,
        grad_scaler: GradientScaler | None = None,
        rule: str = "gated",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.rule = check_guided_rule(rule)
        check_not_scripted(model)  # the guided rule cannot see inside TorchScript modules
        super().__init__(model, mode, fd_step, grad_scaler)
        if self.resolved_mode == "finite_difference":
            _eager_forward(model)  # refuses compiled submodules
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
        self.weight = float(weight)
        self.distance = distance
        self.target = target
        self.fraction = float(fraction)
        self.last_cosine: torch.Tensor | None = None

    def __repr__(self) -> str:
        distance = self.distance if isinstance(self.distance, str) else "<callable>"
        mode = "" if self.mode == "auto" else f", mode={self.mode!r}"
        rule = "" if self.rule == "gated" else f", rule={self.rule!r}"
        return (
            f"{type(self).__name__}(weight={self.weight}, distance={distance!r}, "
            f"target={self.target!r}, fraction={self.fraction}{mode}{rule})"
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
            The logits ``(B, C)`` (the ``.logits`` tensor, for a model returning a
            Hugging Face ``ModelOutput`` or a dict with key ``"logits"``) and the
            weighted penalty (0-d), both with their graph down to the caller's: when
            ``inputs`` come out of trainable modules (``reg(pre(x), labels)``), the
            training loss back-propagates into them too, exactly as through the
            composed model.

        Raises
        ------
        RuntimeError, TypeError, ValueError
            The errors of both penalties (listed in :mod:`captum_regularized.regularizers`);
            a ``ValueError`` also for a train-mode BatchNorm layer seeing one value per
            channel (PyTorch's own refusal) and for a model without an activation the
            guided rule knows.
        """
        with self._training_call(inputs, labels) as scale:
            batch = inputs.shape[0]
            count = max(1, min(batch, round(self.fraction * batch)))
            return self._in_resolved_mode(
                lambda: self._double_backprop(
                    inputs, labels, additional_forward_args, count, scale
                ),
                lambda: self._finite_difference(
                    inputs, labels, additional_forward_args, count, scale
                ),
                inputs.device,
            )

    def _double_backprop(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        additional_forward_args: Any,
        count: int,
        scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` with ``g`` kept in the graph (``create_graph=True``)."""
        if count == inputs.shape[0]:
            with self._double_backward_pass():
                logits, plain, guided = guided_and_plain_gradients(
                    self.model,
                    inputs,
                    additional_forward_args=additional_forward_args,
                    create_graph=True,
                    per_example=True, rule=self.rule,
                    score_fn=lambda output: self._scores(output, labels, scale),
                )
        else:
            logits, plain, guided = self._subset_gradients(
                inputs, labels, additional_forward_args, count, scale
            )
        self._check_double_backward_once(logits, plain)
        if scale is not None:
            plain, guided = plain / scale, guided / scale
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
        scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = format_additional_args(additional_forward_args)
        logits = logits_of(self.model(inputs, *(args or ())), "model")
        check_class_logits(logits, labels)
        batch = inputs.shape[0]
        rows = torch.randperm(batch, device=inputs.device)[:count]
        chosen = labels if self.target == "label" else logits.detach().argmax(1)
        subset_args = _subset_args(args, rows, batch)
        with kept_batchnorm_statistics(self.model), self._double_backward_pass():
            _, plain, guided = guided_and_plain_gradients(
                self.model,
                inputs[rows],
                additional_forward_args=subset_args,
                create_graph=True,
                per_example=True, rule=self.rule,
                score_fn=lambda output: _scaled(_logits_at(output, chosen[rows]), scale),
            )
        return logits, plain, guided

    def _finite_difference(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        additional_forward_args: Any,
        count: int,
        scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` with the penalty's weight gradient by a forward difference."""
        model = self.model
        eager = _eager_forward(model)
        args = tuple(format_additional_args(additional_forward_args) or ())
        batch = inputs.shape[0]
        rows = None if count == batch else torch.randperm(batch, device=inputs.device)[:count]
        sub_inputs = inputs if rows is None else inputs[rows]
        sub_labels = labels if rows is None else labels[rows]
        sub_args = args if rows is None else _subset_args(args, rows, batch)
        chosen: dict[str, torch.Tensor] = {}

        def scores(output: torch.Tensor) -> torch.Tensor:
            check_class_logits(output, sub_labels)
            classes = sub_labels if self.target == "label" else output.detach().argmax(1)
            chosen["classes"] = classes
            return _scaled(_logits_at(output, classes), scale)

        # 1. The guided pass (first order, graph freed), recording BatchNorm statistics.
        first = _BatchStatistics("record")

        def recorded(x: torch.Tensor, *extra: Any) -> torch.Tensor:
            with first:
                return eager(x, *extra)

        with self._gradient_pass(inputs.device):
            _, plain, guided = guided_and_plain_gradients(
                recorded, sub_inputs, additional_forward_args=sub_args, per_example=True,
                rule=self.rule, score_fn=scores,
            )
        if scale is not None:
            plain, guided = plain / scale, guided / scale
        classes = chosen["classes"]

        def penalty(leaf: torch.Tensor) -> torch.Tensor:
            per_example = self._distance(leaf, guided)
            _check_per_example_loss(per_example, leaf.shape[0])
            return self.weight * per_example.mean()

        value, direction = penalty_and_direction(penalty, plain)
        self.last_cosine = (_unit_rows(plain) * _unit_rows(guided)).sum(1).mean().detach()

        def target_sum(logits: torch.Tensor, subset: bool) -> torch.Tensor:
            return _logits_at(logits[rows] if subset else logits, classes).sum()

        def callers_pass(mode: TorchFunctionMode | None = None) -> torch.Tensor:
            with torch.enable_grad(), mode or contextlib.nullcontext():
                logits = logits_of(model(inputs, *args), "model")
            check_class_logits(logits, labels)
            return logits

        if self.weight == 0:  # no penalty, no perturbed pass
            logits = callers_pass()
            return logits, without_penalty_gradient(value, target_sum(logits, rows is not None))
        step = self._finite_difference_step(sub_inputs, direction)

        # 2. The pass at x + h v, whose weight gradient is kept; 3. the caller's pass.
        if not first.statistics:  # no train-mode BatchNorm: examples are independent
            forward = unwrap_parallel(model)  # may be compiled
            perturbed = self._perturbed_pass(
                lambda x: target_sum(logits_of(forward(x, *sub_args), "model"), False),
                sub_inputs, direction, step, scale=scale,
            )
            logits = callers_pass()
            # S(x), unless the perturbed pass subtracted its gradients already.
            reference = None if perturbed.differences else target_sum(logits, rows is not None)
            return logits, finite_difference_penalty(value, reference, perturbed, sub_inputs)

        if rows is None:
            # Normalise x + h v with the statistics of x, held: the leaves collect
            # d/d(statistics), which the caller's pass carries on to the weights.
            held = [
                (mean.clone().requires_grad_(True), var.clone().requires_grad_(True))
                for mean, var in first.statistics
            ]

            def held_loss(x: torch.Tensor) -> torch.Tensor:
                hold = _BatchStatistics("hold", held)
                with hold:
                    total = target_sum(logits_of(eager(x, *args), "model"), False)
                if hold.calls != len(held):
                    raise RuntimeError(_MISMATCH)
                return total

            perturbed = self._perturbed_pass(
                held_loss, inputs, direction, step, scale=scale,
                extra_inputs=[t for pair in held for t in pair],
            )
            extra = perturbed.extra_gradients
            inject = _BatchStatistics(
                "inject",
                held=[(extra[2 * i], extra[2 * i + 1]) for i in range(len(held))],
                means=[mean for mean, _ in first.statistics],
            )
            logits = callers_pass(inject)
            if inject.calls != len(held):
                raise RuntimeError(_MISMATCH)
            # S(x) plus the statistics' share, both subtracted/added through the
            # caller's backward pass: <d/d(stats) S(x + h v), stats(x; theta)>. With
            # differences (loss scaling), S(x) and its d/d(stats) were subtracted in
            # the perturbed pass: only <difference, stats(x; theta)> is left here.
            statistics_share = torch.stack(inject.injected).sum()
            reference = (
                -statistics_share if perturbed.differences
                else target_sum(logits, False) - statistics_share
            )
            return logits, finite_difference_penalty(value, reference, perturbed, inputs)

        # A subset: the caller's pass normalises with the whole batch, so the reference
        # S(x_subset) runs beside x_subset + h v in one pass, both normalised with the
        # statistics of the unperturbed half.
        pair = torch.cat([sub_inputs, sub_inputs])
        twice = torch.arange(count, device=inputs.device).repeat(2)
        pair_args = _subset_args(tuple(sub_args or ()), twice, count)
        half = _BatchStatistics("reference_half")

        def difference(x: torch.Tensor) -> torch.Tensor:
            with half:
                out = _logits_at(logits_of(eager(x, *pair_args), "model"), classes.repeat(2))
            return out[:count].sum() - out[count:].sum()

        perturbed = self._perturbed_pass(
            difference, pair, torch.cat([direction, torch.zeros_like(direction)]), step,
            scale=scale, loss_is_difference=True,
        )
        if perturbed.input_gradient is not None:  # fold the halves: grad_x at x + h v minus at x
            halves = perturbed.input_gradient
            perturbed = perturbed._replace(input_gradient=halves[:count] + halves[count:])
        logits = callers_pass()
        return logits, finite_difference_penalty(value, None, perturbed, sub_inputs)

    def _scores(
        self, logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_class_logits(logits, labels)
        classes = labels if self.target == "label" else logits.detach().argmax(1)
        return _scaled(_logits_at(logits, classes), scale)


def _scaled(scores: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Scores times a loss scale, in float32 so half-precision logits cannot overflow."""
    return scores if scale is None else scores.to(torch.float32) * scale


def _subset_args(args: tuple[Any, ...] | None, rows: torch.Tensor, batch: int) -> Any:
    """Per-example additional forward arguments restricted to ``rows``."""
    if args is None:
        return None
    return tuple(arg[rows] if is_per_example(arg, batch) else arg for arg in args)

