"""Riemann–Stieltjes integrated Grad-CAM (Lucas et al., arXiv 2205.10900).

:class:`LayerRSIGradCam`'s docstring gives the maths. The method runs the path points
in passes planned by :mod:`~captum_regularized.attr.rsi_grad_cam.path_batching`, takes
the layer's activation with :class:`~captum_regularized._internal.layer_tap.LayerTap`
(the backward pass stops at the layer) and reduces the path here: streamed for a fixed
``n_steps`` (:class:`_PathIntegral`), by nested trapezoid refinement for
``n_steps="auto"`` (:meth:`LayerRSIGradCam._attribute_group_auto`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from captum.attr import GradientAttribution, LayerAttribution
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parameter import is_lazy

from captum_regularized._internal.captum_compat import (
    BaselineType,
    TargetType,
    TensorOrTuple,
    WithoutFutures,
    format_additional_args,
    format_baselines,
    format_inputs,
    log_usage,
)
from captum_regularized._internal.checks import (
    check_attribution_inputs,
    check_autograd_available,
)
from captum_regularized._internal.layer_maps import check_grad_kwargs, checked_layer_method
from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.targets import (
    class_indices,
    is_score_target,
    per_example_score_targets,
    target_scores,
)
from captum_regularized._internal.user_feedback import (
    ProgressBar,
    check_progress,
    progress_bar,
    show_progress,
    warn_if_training,
)
from captum_regularized.attr.rsi_grad_cam.path_batching import (
    PathPlan,
    automatic_pass_rows,
    expand_for_steps,
    path_points,
    per_example_flags,
    plan_path,
    step_passes,
    take_examples,
    take_positions,
)

__all__ = ["LayerRSIGradCam"]

OutputTransform = Literal["softmax", "log_softmax"] | Callable[[torch.Tensor], torch.Tensor] | None
VARIANTS = ("plain", "unit_selection", "relu_gradients")
AUTO_START_STEPS = 4
"""Path intervals of the first level of ``n_steps="auto"``; later levels double it."""
_SUM_CHUNK = 16
"""Path intervals summed at once over the stored points of ``n_steps="auto"`` (bounds
the temporaries of the sum to this many points' worth of layer values)."""
NAMED_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda out: torch.softmax(out, dim=1),
    "log_softmax": lambda out: torch.log_softmax(out, dim=1),
}


def _resolve_output_transform(
    output_transform: OutputTransform,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if output_transform is None:
        return lambda out: out
    if isinstance(output_transform, str):
        if output_transform not in NAMED_TRANSFORMS:
            raise ValueError(
                "output_transform must be None, 'softmax', 'log_softmax' or a callable, "
                f"got {output_transform!r}"
            )
        return NAMED_TRANSFORMS[output_transform]
    if callable(output_transform):
        return output_transform
    raise TypeError(
        "output_transform must be None, 'softmax', 'log_softmax' or a callable, "
        f"got {type(output_transform).__name__}"
    )


def _check_steps(n_steps: object, tolerance: object, max_steps: object) -> bool:
    """Validate the step arguments; True when ``n_steps`` is ``"auto"``."""
    if isinstance(n_steps, str):
        if n_steps != "auto":
            raise ValueError(f"n_steps must be an int >= 1 or 'auto', got {n_steps!r}")
    elif isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int or 'auto', got {type(n_steps).__name__}")
    elif n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"tolerance must be a float, got {type(tolerance).__name__}")
    if not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance must be a finite number > 0, got {tolerance}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        raise TypeError(f"max_steps must be an int, got {type(max_steps).__name__}")
    if max_steps < AUTO_START_STEPS:
        raise ValueError(
            f"max_steps must be at least {AUTO_START_STEPS} (the first step count of "
            f"n_steps='auto'), got {max_steps}"
        )
    return n_steps == "auto"


def _trapezoid_sum(
    activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool
) -> torch.Tensor:
    """Per-unit trapezoidal Riemann–Stieltjes sum over stored points.

    ``activations`` and ``gradients`` are ``(points, examples, C, h, w)`` in ascending
    path order (``l = 0`` first); the terms are those of :class:`_PathIntegral`,
    summed :data:`_SUM_CHUNK` intervals at a time.
    """
    total: torch.Tensor | None = None
    intervals = activations.shape[0] - 1
    for start in range(0, intervals, _SUM_CHUNK):
        stop = min(start + _SUM_CHUNK, intervals)
        grads = gradients[start : stop + 1]
        if relu_gradients:
            grads = torch.relu(grads)
        mean_gradients = 0.5 * (grads[1:] + grads[:-1])
        rises = activations[start + 1 : stop + 1] - activations[start:stop]
        part = (mean_gradients * rises).sum(0)
        total = part if total is None else total + part
    if total is None:
        raise RuntimeError("the path integral needs at least two points")
    return total


def _cam_from_rsi(
    rsi: torch.Tensor,
    at_input: torch.Tensor,
    at_baseline: torch.Tensor,
    settings: _Settings,
) -> torch.Tensor:
    """The map ``(examples, 1, h, w)`` from the variant's per-unit RSI and ``A_m``, ``A_0``.

    ``(examples, C, h, w)``, one map per channel, without ``attr_dim_summation``.
    """
    if settings.variant == "unit_selection":
        rsi = rsi * ((at_input > 0) & (rsi > 0) & (at_input > at_baseline))
    weights = rsi.mean(dim=(2, 3), keepdim=True)
    cam = weights * at_input
    if settings.attr_dim_summation:
        cam = cam.sum(dim=1, keepdim=True)
    if settings.relu_attributions:
        cam = torch.relu(cam)
    return cam


@contextlib.contextmanager
def _kept_reached_batchnorm_statistics() -> Iterator[None]:
    """Keep the running statistics of every BatchNorm module the block's forward passes reach.

    For a ``forward_func`` that is not an ``nn.Module`` (``lambda t: model(t)``) the
    model, and so its BatchNorm modules, are unknown up front. A global forward
    pre-hook, acting in this thread only, saves a BatchNorm module's running mean,
    variance and batch counter the first time the module runs; they are written back
    when the block ends, even when it raises. Modules keep their mode, as in
    :func:`~captum_regularized._internal.model_state.kept_batchnorm_statistics`.
    Modules run by compiled code that skips module hooks are not seen.
    """
    thread = threading.get_ident()
    saved: dict[int, tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def save(module: nn.Module, args: Any) -> None:
        if (
            isinstance(module, _BatchNorm)
            and id(module) not in saved
            and threading.get_ident() == thread
        ):
            buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
            saved[id(module)] = (  # the module is kept so that its id stays unique
                module,
                [
                    (buffer, buffer.detach().clone())
                    for buffer in buffers
                    if buffer is not None and not is_lazy(buffer)
                ],
            )

    handle = register_module_forward_pre_hook(save)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for _, buffers in saved.values():
                for buffer, value in buffers:
                    buffer.copy_(value)


class _PathIntegral:
    """Streamed trapezoidal Riemann–Stieltjes sum over one group of examples.

    Points arrive in descending order (``l = m`` first); only the previous point's
    activation and gradient are kept between passes, so memory does not grow with
    ``n_steps``. Terms are added one path step at a time, in the same order whatever
    the pass sizes, so the result does not depend on ``internal_batch_size``.
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
        mean_gradients = 0.5 * (gradients[:-1] + gradients[1:])
        terms = mean_gradients * (activations[:-1] - activations[1:])
        for term in terms:
            self.rsi = term if self.rsi is None else self.rsi + term

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(RSI, A_m, A_0)``, each ``(examples, C, h, w)``, once every point was added."""
        if self.rsi is None or self.at_input is None or self.at_baseline is None:
            raise RuntimeError("the path integral needs every point from l = m down to l = 0")
        return self.rsi, self.at_input, self.at_baseline


@dataclass(frozen=True)
class _Settings:
    """What every pass of one ``attribute`` call shares."""

    tap: LayerTap
    per_example: tuple[bool, ...] | None
    """Which additional forward args follow the batch (decided on the full batch)."""
    transform: Callable[[torch.Tensor], torch.Tensor]
    """The output transform, applied before the target is selected."""
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    variant: str
    relu_attributions: bool
    attr_dim_summation: bool
    grad_kwargs: dict[str, Any] | None
    bar: ProgressBar
    """Counts the path points run (see ``progress``)."""


class _Group(NamedTuple):
    """The examples one group of passes explains, in the forms the passes take."""

    inputs: tuple[torch.Tensor, ...]
    baselines: tuple[torch.Tensor, ...]
    target: TargetType
    args: tuple[Any, ...] | None

    def take(
        self, positions: list[int], kept: torch.Tensor, per_example: tuple[bool, ...] | None
    ) -> _Group:
        """The examples at ``positions`` (``kept``: the same, on the device) of this group.

        A baseline shared by all examples stays shared.
        """
        target, args = take_positions(self.target, self.args, per_example, positions)
        return _Group(
            tuple(x[kept] for x in self.inputs),
            tuple(b if b.shape[0] == 1 else b[kept] for b in self.baselines),
            target,
            args,
        )


class LayerRSIGradCam(WithoutFutures, LayerAttribution, GradientAttribution):
    r"""Grad-CAM whose channel weights integrate gradients along an input-space path.

    RSI-Grad-CAM (Lucas, Lerma, Furst and Raicu, "Visual explanations from deep
    networks via Riemann-Stieltjes integrated gradient-based localization", arXiv
    2205.10900) replaces Grad-CAM's gradient at the input by an integral along the
    straight path from a baseline ``x'`` to the input ``x``, sampled at
    ``x_l = x' + (l/m)(x - x')`` for ``l = 0..m``. With ``A_l`` the layer's activation at
    ``x_l`` and ``G_l`` the gradient of the target score with respect to it, every unit
    ``(k, i, j)`` gets the trapezoidal Riemann–Stieltjes sum

    .. math::

        RSI_{kij} = \sum_{l=1}^{m} \tfrac12 (G_{l-1} + G_l)_{kij} (A_l - A_{l-1})_{kij},

    channels are weighted by ``w_k = mean_ij RSI_kij`` and the map is
    ``relu(sum_k w_k A_{m,k})``. When the output depends on the input only through the
    layer, ``sum RSI`` approaches ``y_t(x) - y_t(x')`` as ``m`` grows (completeness); the
    gap is returned by ``return_convergence_delta=True``.

    All ``m + 1`` points are run in batched passes (``internal_batch_size`` rows per
    pass, or an automatic size), and each backward pass stops at the layer, so the cost is
    about ``m + 1`` forward passes plus ``m + 1`` backward passes through the head only.
    The reduction is streamed, so memory is bounded by ``internal_batch_size`` times
    the layer size, not by ``n_steps``.

    ``n_steps="auto"`` chooses ``m`` per example by nested trapezoid refinement: it
    starts at ``m = 4`` (:data:`AUTO_START_STEPS`) and doubles ``m`` by evaluating only
    the new midpoints ``l = 1, 3, ..., 2m - 1`` of the finer grid (the old points are
    the even ones, ``l/m = 2l/2m``, and are reused). An example stops at the first
    count whose completeness gap ``|sum RSI - (y_t(x) - y_t(x'))|`` of the plain sum is
    at most ``tolerance * |y_t(x) - y_t(x')|``, or at the largest count ``4 * 2**j`` not
    above ``max_steps``; examples that stop leave the batch, so the others' passes get
    smaller. The result for an example that stopped at ``m`` is the fixed ``n_steps=m``
    result (up to float rounding), whatever the variant: the criterion is always the
    plain sum's gap, the variant only shapes the map. The count each example used is
    kept in :attr:`last_n_steps`. Refinement needs every point of the current level,
    so the activations and gradients of its ``m + 1`` points are stored for the examples
    still refining: about ``2 (m + 1)`` times the layer size per example, in float32
    (``internal_batch_size`` bounds the examples refined together and the rows per pass).
    The gap is compared once per level, one host synchronisation per doubling. The gap
    converges only when the score depends on the input through the layer alone (no
    path around it) and ``y_t(x) != y_t(x')``; otherwise examples run to ``max_steps``.

    Explain models in eval mode. A model left in train mode is run as found, so its
    BatchNorm layers normalise each pass with that pass's own statistics and the map
    then depends on how the path points are batched; their running statistics are
    saved and written back, so attribution never changes the model. That holds also
    when ``forward_func`` is a plain function around a model (``lambda t: model(t)``):
    then the statistics of every BatchNorm module that runs during attribution are kept
    (found by a global module hook that is removed afterwards).

    The maps and deltas have the inputs' floating dtype, also under ``torch.autocast``.
    The passes run in the inputs' precision with autocast switched off, and the sums
    are accumulated in at least float32: the path sum adds many small products of
    gradients and activation differences, which bfloat16's 8-bit significand cannot
    resolve (on small untrained CNNs a bfloat16 pass turned maps of some examples
    into all-zero ones). ``internal_batch_size`` bounds the memory this costs.

    An empty batch gives empty maps ``(0, 1, h, w)`` (and empty deltas); the model
    still runs once, on zero rows, to learn ``h`` and ``w``.

    Long calls (more than 64 forward/backward passes) show a progress bar with an ETA on
    a terminal; ``progress=`` turns it on or off. A model in train mode gets a warning.

    Activation checkpointing: ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
    around the layer works; the reentrant form runs its block without autograd, so
    there is no graph from the layer to the output, and a clear ``ValueError`` says so.

    Parameters
    ----------
    forward_func : callable
        The model (or any function of the inputs) returning a tensor, a Hugging Face
        ``ModelOutput`` (its ``.logits`` are used) or a dict with key ``"logits"``.
    layer : nn.Module
        The layer whose activations are explained. It must run exactly once per
        forward pass. For a vision transformer pick a layer whose patch tokens still
        reach the class token, e.g. ``model.encoder.layers[-1].ln_1`` of a torchvision
        ``VisionTransformer``, ``model.blocks[-1].norm1`` of a timm ViT or DeiT,
        ``model.vit.layers[-1].layernorm_before`` of a Hugging Face
        ``ViTForImageClassification`` (``vit.encoder.layer[-1]`` before transformers
        5) (after the last block only the class token feeds
        the head, so patch-token gradients there are zero), with the matching
        ``reshape_transform`` of :mod:`~captum_regularized.attr.reshape_transforms`.
    device_ids : list of int, optional
        Kept for Captum's signature. An ``nn.DataParallel`` model runs its wrapped
        module, on that module's device (the layer hook cannot follow the replicas).

    Attributes
    ----------
    last_n_steps : Tensor or None
        Path intervals ``m`` each example of the last successful :meth:`attribute` call
        used, a ``(B,)`` long tensor on the inputs' device (``n_steps`` everywhere for a
        fixed count; the chosen counts for ``n_steps="auto"``). ``None`` before the first
        call. Not shared safely between threads that call the same instance.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> cam = LayerRSIGradCam(model, model.block3)
    >>> maps = cam.attribute(torch.rand(2, 3, 16, 16), target=1, n_steps=8)
    >>> maps.shape
    torch.Size([2, 1, 4, 4])
    >>> LayerAttribution.interpolate(maps, (16, 16)).shape
    torch.Size([2, 1, 16, 16])

    Adaptive step counts, with the completeness gap each example reached:

    >>> maps, gaps = cam.attribute(
    ...     torch.rand(2, 3, 16, 16), target=1, n_steps="auto", tolerance=1e-2,
    ...     return_convergence_delta=True,
    ... )
    >>> cam.last_n_steps.dtype, cam.last_n_steps.shape, gaps.shape
    (torch.int64, torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        forward_func = checked_layer_method(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.last_n_steps: torch.Tensor | None = None

    def has_convergence_delta(self) -> bool:
        """True: ``attribute(..., return_convergence_delta=True)`` gives the completeness gap.

        That is what :class:`captum.attr.NoiseTunnel` uses.
        :meth:`compute_convergence_delta` cannot recompute it from a map.
        """
        return True

    def compute_convergence_delta(
        self,
        attributions: TensorOrTuple,
        start_point: BaselineType,
        end_point: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Not available: ask ``attribute`` for the deltas instead.

        Captum's version compares the sum of the attributions with the output difference.
        The sum of an RSI-Grad-CAM map is not RSI's sum (the map weights the channels of
        ``A_m`` by spatial means), so that number would mean nothing. The completeness gap
        ``sum RSI - (y_t(x) - y_t(x'))`` needs the integral itself, which
        ``attribute(..., return_convergence_delta=True)`` returns.

        Raises
        ------
        NotImplementedError
            Always, pointing to ``return_convergence_delta=True``.
        """
        raise NotImplementedError(
            "LayerRSIGradCam cannot compute the convergence delta from a map (its sum is not "
            "the RSI sum); call attribute(..., return_convergence_delta=True) to get the "
            "completeness gap sum RSI - (y_t(x) - y_t(x')) per example"
        )

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: gradients are integrated against activation differences ``A_l - A_{l-1}``."""
        return True

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        baselines: BaselineType = None,
        n_steps: int | Literal["auto"] = 50,
        internal_batch_size: int | None = None,
        output_transform: OutputTransform = None,
        variant: str = "plain",
        relu_attributions: bool = True,
        attribute_to_layer_input: bool = False,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_convergence_delta: bool = False,
        tolerance: float = 1e-2,
        max_steps: int = 256,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Compute RSI-Grad-CAM maps of shape ``(B, 1, h, w)``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Input batch (batch in dim 0); a tuple for multi-input models.
        target : int, tuple, list, Tensor, callable or None
            Captum's target forms. ``None`` on a multi-class output means the class the
            model predicts for the real input (found once, used at every path point).
            A callable ``score(output) -> (B,)`` (pytorch-grad-cam's
            ``ClassifierOutputTarget(k)``) or a list of callables, one per example,
            each given its example's output row, chooses the score at every path point
            (after ``output_transform``).
        additional_forward_args : any, optional
            Extra arguments for ``forward_func`` after the inputs; tensors whose dim 0
            is the batch are treated per example (taken and repeated with their
            examples' path points), everything else (a shared ``(classes,)`` bias, a 0-d
            tensor, a number) is passed unchanged to every forward call.
        baselines : Tensor, number or tuple, optional
            Start of the path, in Captum's forms; default zeros.
        n_steps : int or 'auto'
            Number of path intervals ``m`` (``m + 1`` points, both ends included), or
            ``'auto'``: per example, the first of ``m = 4, 8, 16, ...`` (nested: each
            count reuses the previous count's points) whose completeness gap is at most
            ``tolerance * |y_t(x) - y_t(x')|``, at most ``max_steps`` (see the class
            notes). :attr:`last_n_steps` tells the counts used.
        internal_batch_size : int, optional
            Rows per forward/backward pass; bounds peak memory. ``None`` runs every path
            point of every example in one pass on GPUs, and passes of about 2**20 input
            elements on CPUs (faster there: a pass stays in cache). The result does not
            depend on it.
        output_transform : None, 'softmax', 'log_softmax' or callable
            Applied to the model output before the target is selected. ``None``
            attributes what ``forward_func`` returns (Captum's convention); the paper
            scores the post-softmax probability (``'softmax'``).
        variant : {'plain', 'unit_selection', 'relu_gradients'}
            ``'unit_selection'`` keeps only units with ``A_m > 0``, ``RSI > 0`` and
            ``A_m - A_0 > 0`` (others count as zero in the spatial mean);
            ``'relu_gradients'`` integrates ``relu(G_l)`` instead of ``G_l``.
        relu_attributions : bool
            Apply a final ReLU to the map, as Grad-CAM does.
        attribute_to_layer_input : bool
            Use the layer's (first) input instead of its output.
        reshape_transform : callable, optional
            Turns the layer's activation (and, identically, its gradient) into
            ``(B, C, h, w)``, e.g. :func:`~captum_regularized.attr.vit_tokens_to_map`
            for vision-transformer tokens.
        return_convergence_delta : bool
            Also return ``sum RSI - (y_t(x) - y_t(x'))`` per example (``'plain'`` only),
            at the count each example used.
        tolerance : float
            For ``n_steps='auto'``: the relative completeness gap at which an example
            stops (finite, > 0). Checked, and otherwise unused, for a fixed count.
        max_steps : int
            For ``n_steps='auto'``: the most path intervals an example gets (at least 4);
            the last count is the largest ``4 * 2**j`` not above it (256 by default).
        attr_dim_summation : bool
            Sum the weighted channels into one map (default), as Captum's
            ``LayerGradCam`` does; ``False`` returns the per-channel maps
            ``w_k A_k``, shape ``(B, C, h, w)`` (with the final ReLU applied to each).
        grad_kwargs : dict, optional
            Passed on to ``torch.autograd.grad`` for the layer gradients, as in Captum's
            ``LayerGradCam`` and ``LayerIntegratedGradients``.
        progress : bool or None
            Show a ``tqdm`` progress bar with an ETA on stderr, counting path points
            (each run for a group of examples). ``None`` (default): when the call runs
            more than 64 forward/backward passes (for ``n_steps="auto"``, at most that
            many: the bar's total is then the ``max_steps`` bound and it ends early
            when every example has converged) and stderr is a terminal; ``True``:
            always; ``False``: never. The maps do not depend on it.

        Returns
        -------
        Tensor or (Tensor, Tensor)
            Maps ``(B, 1, h, w)`` (``(B, C, h, w)`` without ``attr_dim_summation``) in
            the layer's resolution (upsample with
            ``LayerAttribution.interpolate``), and the deltas ``(B,)`` when asked, both in
            the inputs' dtype. ``B = 0`` gives empty results of these shapes.

        Raises
        ------
        ValueError
            For ``n_steps < 1`` or a string other than ``'auto'``, ``tolerance`` not finite
            and positive, ``max_steps < 4``, an unknown ``variant`` or ``output_transform``,
            a baseline of the wrong shape, a bad ``target`` (out of range, wrong length),
            an output that does not keep the batch in dim 0, a layer that never runs (or
            runs twice), a layer that runs with autograd off inside ``forward_func``
            (reentrant activation checkpointing), an activation that is not 4-D after
            ``reshape_transform``, a score that does not depend on the layer, or
            ``return_convergence_delta`` with a variant other than ``'plain'``.
        TypeError
            For non-tensor or non-floating inputs and wrongly typed arguments (``target``
            included; a bool passed as ``baselines``, where Captum's ``LayerGradCam``
            has ``attribute_to_layer_input``).
        RuntimeError
            When called inside ``torch.inference_mode()``.

        Warns
        -----
        UserWarning
            When the model has BatchNorm or Dropout modules in train mode (call
            ``model.eval()`` first); once per call site under Python's default filter.
        """
        check_autograd_available("LayerRSIGradCam")
        check_progress(progress)
        auto = _check_steps(n_steps, tolerance, max_steps)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if return_convergence_delta and variant != "plain":
            raise ValueError(
                "return_convergence_delta is defined for variant='plain' only, "
                f"got variant={variant!r}"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a callable or None")
        check_grad_kwargs(grad_kwargs)
        transform = _resolve_output_transform(output_transform)
        inputs_tuple, _ = format_inputs(inputs)
        model = find_module(self.forward_func)
        batch = check_attribution_inputs(inputs_tuple, model)
        baselines_tuple = format_baselines(inputs_tuple, baselines)
        target = per_example_score_targets(target)
        args = format_additional_args(additional_forward_args)
        per_example = per_example_flags(args, batch)
        out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in inputs_tuple))
        if internal_batch_size is None:
            internal_batch_size = automatic_pass_rows(inputs_tuple)
        plan = plan_path(
            batch, AUTO_START_STEPS if auto else int(n_steps), internal_batch_size
        )
        statistics_kept = (
            kept_batchnorm_statistics(model)
            if model is not None
            else _kept_reached_batchnorm_statistics()
        )
        warn_if_training(self.forward_func, "LayerRSIGradCam")
        passes, points = _planned_work(plan, batch, internal_batch_size, auto, n_steps, max_steps)

        maps, deltas, counts = [], [], []
        with (
            preserved_model(model) as hooks,
            statistics_kept,
            progress_bar(show_progress(progress, passes), points, "LayerRSIGradCam",
                         "point") as bar,
        ):
            settings = _Settings(
                LayerTap(self.layer, hooks, use_input=attribute_to_layer_input),
                per_example,
                transform,
                reshape_transform,
                variant,
                relu_attributions,
                attr_dim_summation,
                grad_kwargs,
                bar,
            )
            for rows in plan.example_groups:
                group = _Group(
                    tuple(x[rows] for x in inputs_tuple),
                    tuple(b if b.shape[0] == 1 else b[rows] for b in baselines_tuple),
                    *take_examples(target, args, rows, batch),
                )
                if auto:
                    cam, delta, used = self._attribute_group_auto(
                        settings, group, internal_batch_size, float(tolerance), max_steps
                    )
                    counts.append(used)
                else:
                    cam, delta = self._attribute_group(
                        settings, group, int(n_steps), plan.step_chunks
                    )
                maps.append(cam)
                deltas.append(delta)
        attributions = torch.cat(maps).to(out_dtype)
        device = inputs_tuple[0].device
        self.last_n_steps = (
            torch.cat(counts)
            if auto
            else torch.full((batch,), int(n_steps), dtype=torch.long, device=device)
        )
        if return_convergence_delta:
            return attributions, torch.cat(deltas).to(out_dtype)
        return attributions

    def _attribute_group(
        self, settings: _Settings, group: _Group, n_steps: int, step_chunks: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and deltas (float32 or wider) of one group of examples, streamed over the path."""
        integral = _PathIntegral(relu_gradients=settings.variant == "relu_gradients")
        end_scores: list[torch.Tensor] = []  # [at the input, at the baseline]
        classes: torch.Tensor | None = None
        for steps in step_chunks:
            activations, gradients, scores, classes = self._run_pass(
                settings, group, steps, n_steps, classes
            )
            integral.add(activations, gradients, ends_at_baseline=steps[-1] == 0)
            if not end_scores:
                end_scores.append(scores[0])
            if steps[-1] == 0:
                end_scores.append(scores[-1])
        rsi, at_input, at_baseline = integral.result()
        delta = rsi.sum(dim=(1, 2, 3)) - (end_scores[0] - end_scores[-1]).to(rsi.dtype)
        return _cam_from_rsi(rsi, at_input, at_baseline, settings), delta

    def _run_pass(
        self,
        settings: _Settings,
        group: _Group,
        steps: list[int],
        n_steps: int,
        classes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One pass over points ``steps`` (of ``n_steps`` intervals) of a group's examples.

        Returns the activations and gradients ``(len(steps), examples, C, h, w)`` (float32
        or wider), the detached scores ``(len(steps), examples)`` and the classes (see
        :func:`_select_scores`).
        """
        examples = group.inputs[0].shape[0]
        points = path_points(group.inputs, group.baselines, steps, n_steps)
        _, pass_args = expand_for_steps(None, group.args, len(steps), settings.per_example)
        # in the inputs' precision, also under autocast (see the class notes)
        with torch.autocast(points[0].device.type, enabled=False):
            output, leaf = settings.tap.run(self.forward_func, points, pass_args)
            with torch.enable_grad():
                scores, classes = _select_scores(
                    settings.transform(output), group.target, classes, examples, len(steps)
                )
            gradient = settings.tap.gradient(scores, settings.grad_kwargs)
        activations = _as_maps(leaf.detach(), settings.reshape_transform, len(steps), examples)
        gradients = _as_maps(gradient, settings.reshape_transform, len(steps), examples)
        settings.bar.update(len(steps))  # host-only
        return activations, gradients, scores.detach().reshape(len(steps), examples), classes

    def _attribute_group_auto(
        self,
        settings: _Settings,
        group: _Group,
        internal_batch_size: int | None,
        tolerance: float,
        max_steps: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps, plain deltas and step counts of one group, by nested refinement.

        The current level's points are stored in ascending path order, ``(m + 1,
        examples, C, h, w)``, for the examples still refining. Doubling ``m`` allocates
        the finer grid, copies the old points into its even slots and fills the odd
        slots with the new midpoints, pass by pass.
        """
        examples = group.inputs[0].shape[0]
        device = group.inputs[0].device
        n_steps = AUTO_START_STEPS
        activations: torch.Tensor | None = None
        gradients: torch.Tensor | None = None
        at_input_scores: torch.Tensor | None = None
        at_baseline_scores: torch.Tensor | None = None
        classes: torch.Tensor | None = None
        # The first level in descending order: the first pass sees the real inputs,
        # which fixes the class for target=None.
        for steps in step_passes(list(range(n_steps, -1, -1)), examples, internal_batch_size):
            acts, grads, scores, classes = self._run_pass(settings, group, steps, n_steps, classes)
            if activations is None or gradients is None:
                activations = acts.new_empty((n_steps + 1, *acts.shape[1:]))
                gradients = grads.new_empty((n_steps + 1, *grads.shape[1:]))
                at_input_scores = scores[0]
            activations[steps[-1] : steps[0] + 1] = acts.flip(0)
            gradients[steps[-1] : steps[0] + 1] = grads.flip(0)
            if steps[-1] == 0:
                at_baseline_scores = scores[-1]
        if activations is None or gradients is None or at_input_scores is None:
            raise RuntimeError("the first level of n_steps='auto' ran no pass")
        if at_baseline_scores is None:
            raise RuntimeError("the first level of n_steps='auto' missed the baseline")
        rise = (at_input_scores - at_baseline_scores).to(activations.dtype)
        channels = 1 if settings.attr_dim_summation else activations.shape[2]
        cams = activations.new_zeros((examples, channels, *activations.shape[-2:]))
        deltas = activations.new_zeros((examples,))
        used = torch.zeros((examples,), dtype=torch.long, device=device)
        active = list(range(examples))  # positions in the group of the examples refining
        while active:
            plain = _trapezoid_sum(activations, gradients, relu_gradients=False)
            gap = plain.sum(dim=(1, 2, 3)) - rise
            if 2 * n_steps > max_steps:
                stops = [True] * len(active)
            else:  # the one host synchronisation of a level
                stops = (gap.abs() <= tolerance * rise.abs()).tolist()
            stopping = [i for i, stop in enumerate(stops) if stop]
            if stopping:
                chosen = torch.tensor(stopping, dtype=torch.long, device=device)
                acts, grads = activations[:, chosen], gradients[:, chosen]
                rsi = (
                    _trapezoid_sum(acts, grads, relu_gradients=True)
                    if settings.variant == "relu_gradients"
                    else plain[chosen]
                )
                where = torch.tensor([active[i] for i in stopping], dtype=torch.long, device=device)
                cams[where] = _cam_from_rsi(rsi, acts[-1], acts[0], settings)
                deltas[where] = gap[chosen]
                used[where] = n_steps
            refining = [i for i, stop in enumerate(stops) if not stop]
            if not refining:
                break
            kept = torch.tensor(refining, dtype=torch.long, device=device)
            if stopping:
                group = group.take(refining, kept, settings.per_example)
                classes = None if classes is None else classes[kept]
                rise = rise[kept]
                active = [active[i] for i in refining]
            finer = activations.new_empty((2 * n_steps + 1, len(active), *activations.shape[2:]))
            finer[0::2] = activations[:, kept] if stopping else activations
            activations = finer
            finer = gradients.new_empty(activations.shape)
            finer[0::2] = gradients[:, kept] if stopping else gradients
            gradients = finer
            del finer, plain, gap
            n_steps *= 2
            for steps in step_passes(list(range(1, n_steps, 2)), len(active), internal_batch_size):
                acts, grads, _, _ = self._run_pass(settings, group, steps, n_steps, classes)
                activations[steps[0] : steps[-1] + 1 : 2] = acts
                gradients[steps[0] : steps[-1] + 1 : 2] = grads
        return cams, deltas, used


def _planned_work(
    plan: PathPlan,
    batch: int,
    internal_batch_size: int | None,
    auto: bool,
    n_steps: int | str,
    max_steps: int,
) -> tuple[int, int]:
    """Forward/backward passes and path points (per group) a call will run.

    For ``n_steps="auto"`` both are upper bounds: every example refined up to the last
    step count ``4 * 2**j`` not above ``max_steps``.
    """
    groups = len(plan.example_groups)
    if not auto:
        return groups * len(plan.step_chunks), groups * (int(n_steps) + 1)
    passes, m = 0, AUTO_START_STEPS
    for rows in plan.example_groups:
        examples = len(range(*rows.indices(batch)))
        passes += len(step_passes(list(range(m + 1)), examples, internal_batch_size))
        level = m
        while 2 * level <= max_steps:
            level *= 2
            passes += len(step_passes(list(range(1, level, 2)), examples, internal_batch_size))
    last = m
    while 2 * last <= max_steps:
        last *= 2
    return passes, groups * (last + 1)


def _select_scores(
    output: torch.Tensor,
    target: TargetType,
    classes: torch.Tensor | None,
    group: int,
    n_points: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One score per row of a step-major pass of ``n_points * group`` rows, and the classes.

    For ``(rows, classes)`` outputs the class of each example is resolved (and
    validated) once, on the first pass, whose first ``group`` rows are the real inputs:
    ``target=None`` is then the predicted class of the input, used at every path point.
    Target callables score every row (a list of them repeated with the path points).
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


def _as_maps(
    values: torch.Tensor,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
    n_points: int,
    group: int,
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
