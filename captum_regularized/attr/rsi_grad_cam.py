"""Riemann–Stieltjes integrated Grad-CAM (Lucas et al., arXiv 2205.10900)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

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
    format_additional_args,
    format_baselines,
    format_inputs,
    log_usage,
)
from captum_regularized._internal.checks import (
    check_attribution_inputs,
    check_autograd_available,
)
from captum_regularized._internal.model_state import (
    find_module,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.path_batching import (
    LayerTap,
    automatic_pass_rows,
    expand_for_steps,
    path_points,
    per_example_flags,
    plan_path,
    take_examples,
)
from captum_regularized._internal.targets import class_indices, target_scores

__all__ = ["LayerRSIGradCam"]

OutputTransform = Literal["softmax", "log_softmax"] | Callable[[torch.Tensor], torch.Tensor] | None
VARIANTS = ("plain", "unit_selection", "relu_gradients")
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


class LayerRSIGradCam(LayerAttribution, GradientAttribution):
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

    Explain models in eval mode. A model left in train mode is run as found, so its
    BatchNorm layers normalise each pass with that pass's own statistics and the map
    then depends on how the path points are batched; their running statistics are
    saved and written back, so attribution never changes the model. That holds also
    when ``forward_func`` is a plain function around a model (``lambda t: model(t)``):
    then the statistics of every BatchNorm module that runs during attribution are kept
    (found by a global module hook that is removed afterwards).

    The maps and deltas have the inputs' floating dtype, also under ``torch.autocast``
    (the sums are accumulated in at least float32). An empty batch gives empty maps
    ``(0, 1, h, w)`` (and empty deltas); the model still runs once, on zero rows, to
    learn ``h`` and ``w``.

    Activation checkpointing: ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
    around the layer works; the reentrant form runs its block without autograd, so
    there is no graph from the layer to the output, and a clear ``ValueError`` says so.

    Parameters
    ----------
    forward_func : callable
        The model (or any function of the inputs) returning a tensor.
    layer : nn.Module
        The layer whose activations are explained. It must run exactly once per
        forward pass. For a vision transformer pick a layer whose patch tokens still
        reach the class token, e.g. ``model.encoder.layers[-1].ln_1`` of a torchvision
        ``VisionTransformer`` (after the last block only the class token feeds the head,
        so patch-token gradients there are zero).
    device_ids : list of int, optional
        Kept for Captum's signature. ``nn.DataParallel`` models are not supported.

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
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        model = find_module(forward_func)
        if isinstance(model, nn.DataParallel):
            raise ValueError(
                "forward_func is an nn.DataParallel model, which LayerRSIGradCam does not "
                "support; pass model.module instead"
            )
        if model is not None and not any(module is layer for module in model.modules()):
            raise ValueError(
                f"layer ({type(layer).__name__}) is not a submodule of the model passed as "
                "forward_func"
            )
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

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
        n_steps: int = 50,
        internal_batch_size: int | None = None,
        output_transform: OutputTransform = None,
        variant: str = "plain",
        relu_attributions: bool = True,
        attribute_to_layer_input: bool = False,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_convergence_delta: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Compute RSI-Grad-CAM maps of shape ``(B, 1, h, w)``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Input batch (batch in dim 0); a tuple for multi-input models.
        target : int, tuple, list, Tensor or None
            Captum's target forms. ``None`` on a multi-class output means the class the
            model predicts for the real input (found once, used at every path point).
        additional_forward_args : any, optional
            Extra arguments for ``forward_func`` after the inputs; tensors whose dim 0
            is the batch are treated per example (taken and repeated with their
            examples' path points), everything else (a shared ``(classes,)`` bias, a 0-d
            tensor, a number) is passed unchanged to every forward call.
        baselines : Tensor, number or tuple, optional
            Start of the path, in Captum's forms; default zeros.
        n_steps : int
            Number of path intervals ``m`` (``m + 1`` points, both ends included).
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
            Also return ``sum RSI - (y_t(x) - y_t(x'))`` per example (``'plain'`` only).

        Returns
        -------
        Tensor or (Tensor, Tensor)
            Maps ``(B, 1, h, w)`` in the layer's resolution (upsample with
            ``LayerAttribution.interpolate``), and the deltas ``(B,)`` when asked, both in
            the inputs' dtype. ``B = 0`` gives empty results of these shapes.

        Raises
        ------
        ValueError
            For ``n_steps < 1``, an unknown ``variant`` or ``output_transform``, a baseline
            of the wrong shape, a bad ``target`` (out of range, wrong length), an output
            that does not keep the batch in dim 0, a layer
            that never runs (or runs twice), a layer that runs with autograd off inside
            ``forward_func`` (reentrant activation checkpointing), an activation that
            is not 4-D after ``reshape_transform``, a score that does not depend on the
            layer, or ``return_convergence_delta`` with a variant other than ``'plain'``.
        TypeError
            For non-tensor or non-floating inputs and wrongly typed arguments (``target``
            included).
        RuntimeError
            When called inside ``torch.inference_mode()``.
        """
        check_autograd_available("LayerRSIGradCam")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int):
            raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if return_convergence_delta and variant != "plain":
            raise ValueError(
                "return_convergence_delta is defined for variant='plain' only, "
                f"got variant={variant!r}"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a callable or None")
        transform = _resolve_output_transform(output_transform)
        inputs_tuple, _ = format_inputs(inputs)
        model = find_module(self.forward_func)
        batch = check_attribution_inputs(inputs_tuple, model)
        baselines_tuple = format_baselines(inputs_tuple, baselines)
        args = format_additional_args(additional_forward_args)
        per_example = per_example_flags(args, batch)
        out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in inputs_tuple))
        if internal_batch_size is None:
            internal_batch_size = automatic_pass_rows(inputs_tuple)
        plan = plan_path(batch, n_steps, internal_batch_size)
        statistics_kept = (
            kept_batchnorm_statistics(model)
            if model is not None
            else _kept_reached_batchnorm_statistics()
        )

        maps, deltas = [], []
        with preserved_model(model) as hooks, statistics_kept:
            tap = LayerTap(self.layer, hooks, use_input=attribute_to_layer_input)
            for rows in plan.example_groups:
                group_target, group_args = take_examples(target, args, rows, batch)
                cam, delta = self._attribute_group(
                    tap,
                    tuple(x[rows] for x in inputs_tuple),
                    tuple(b if b.shape[0] == 1 else b[rows] for b in baselines_tuple),
                    group_target,
                    group_args,
                    per_example,
                    n_steps,
                    plan.step_chunks,
                    transform,
                    variant,
                    relu_attributions,
                    reshape_transform,
                )
                maps.append(cam)
                deltas.append(delta)
        attributions = torch.cat(maps).to(out_dtype)
        if return_convergence_delta:
            return attributions, torch.cat(deltas).to(out_dtype)
        return attributions

    def _attribute_group(
        self,
        tap: LayerTap,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...],
        target: TargetType,
        args: tuple[Any, ...] | None,
        per_example: tuple[bool, ...] | None,
        n_steps: int,
        step_chunks: list[list[int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        variant: str,
        relu_attributions: bool,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and deltas (float32 or wider) of one group of examples, streamed over the path."""
        group = inputs[0].shape[0]
        integral = _PathIntegral(relu_gradients=variant == "relu_gradients")
        end_scores: list[torch.Tensor] = []  # [at the input, at the baseline]
        classes: torch.Tensor | None = None
        for steps in step_chunks:
            points = path_points(inputs, baselines, steps, n_steps)
            _, chunk_args = expand_for_steps(None, args, len(steps), per_example)
            output, leaf = tap.run(self.forward_func, points, chunk_args)
            with torch.enable_grad():
                scores, classes = _select_scores(
                    transform(output), target, classes, group, len(steps)
                )
            gradient = _layer_gradient(scores, leaf)
            activations = _as_maps(leaf.detach(), reshape_transform, len(steps), group)
            gradients = _as_maps(gradient, reshape_transform, len(steps), group)
            integral.add(activations, gradients, ends_at_baseline=steps[-1] == 0)
            scores = scores.detach().reshape(len(steps), group)
            if not end_scores:
                end_scores.append(scores[0])
            if steps[-1] == 0:
                end_scores.append(scores[-1])
        rsi, at_input, at_baseline = integral.result()
        delta = rsi.sum(dim=(1, 2, 3)) - (end_scores[0] - end_scores[-1]).to(rsi.dtype)
        if variant == "unit_selection":
            rsi = rsi * ((at_input > 0) & (rsi > 0) & (at_input > at_baseline))
        weights = rsi.mean(dim=(2, 3), keepdim=True)
        cam = (weights * at_input).sum(dim=1, keepdim=True)
        if relu_attributions:
            cam = torch.relu(cam)
        return cam, delta


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
    """
    if output.dim() == 0 or output.shape[0] != n_points * group:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)} for a pass of "
            f"{n_points * group} input rows; its output must keep the batch in dim 0"
        )
    if output.dim() != 2:
        expanded, _ = expand_for_steps(target, None, n_points)
        return target_scores(output, expanded), classes
    if classes is None:
        classes = class_indices(output[:group], target)
    return output.gather(1, classes.repeat(n_points)[:, None])[:, 0], classes


def _layer_gradient(scores: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    if not scores.requires_grad:
        raise ValueError(
            "the target score does not depend on the layer; check that the layer lies on "
            "the path from the inputs to the output"
        )
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(scores.sum(), leaf, allow_unused=True)
    if gradient is None:
        raise ValueError(
            "the target score does not depend on the layer; check that the layer lies on "
            "the path from the inputs to the output"
        )
    return gradient


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
