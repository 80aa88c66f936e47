"""Riemann–Stieltjes integrated Grad-CAM (Lucas et al., arXiv 2205.10900).

:meth:`LayerRSIGradCam.attribute` checks its arguments once (:func:`_checked_settings`),
then integrates each group of examples along the path
(:mod:`~captum_regularized.attr.rsi_grad_cam.path_integral`, in the passes that
:mod:`~captum_regularized.attr.rsi_grad_cam.path_batching` plans) and concatenates the
maps. Maintainer notes: :doc:`/design_notes/rsi_grad_cam`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from captum.attr import GradientAttribution, LayerAttribution
from torch import nn

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
from captum_regularized._internal.checks import check_attribution_inputs, check_autograd_available
from captum_regularized._internal.layer_maps import check_grad_kwargs, checked_layer_method
from captum_regularized._internal.layer_tap import LayerTap
from captum_regularized._internal.model_state import find_module, preserved_model
from captum_regularized._internal.targets import per_example_score_targets
from captum_regularized._internal.user_feedback import (
    check_progress,
    progress_bar,
    show_progress,
    warn_if_training,
)
from captum_regularized.attr.rsi_grad_cam.path_batching import (
    automatic_pass_rows,
    per_example_flags,
    plan_path,
)
from captum_regularized.attr.rsi_grad_cam.path_integral import (
    AUTO_START_STEPS,
    PathRunner,
    PathSettings,
)

__all__ = ["LayerRSIGradCam"]

OutputTransform = Literal["softmax", "log_softmax"] | Callable[[torch.Tensor], torch.Tensor] | None
VARIANTS = ("plain", "unit_selection", "relu_gradients")
NAMED_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda out: torch.softmax(out, dim=1),
    "log_softmax": lambda out: torch.log_softmax(out, dim=1),
}


class LayerRSIGradCam(WithoutFutures, LayerAttribution, GradientAttribution):
    r"""Grad-CAM whose channel weights integrate gradients along an input-space path.

    RSI-Grad-CAM (Lucas, Lerma, Furst and Raicu, arXiv 2205.10900) samples the straight
    path from a baseline ``x'`` to the input ``x`` at ``x_l = x' + (l/m)(x - x')``,
    ``l = 0..m``. With ``A_l`` the layer's activation at ``x_l`` and ``G_l`` the
    gradient of the target score with respect to it, each unit ``(k, i, j)`` gets the
    trapezoidal Riemann–Stieltjes sum

    .. math::

        RSI_{kij} = \sum_{l=1}^{m} \tfrac12 (G_{l-1} + G_l)_{kij} (A_l - A_{l-1})_{kij},

    and the map is ``relu(sum_k w_k A_{m,k})`` with ``w_k = mean_ij RSI_kij``. When the
    output depends on the input only through the layer, ``sum RSI`` tends to
    ``y_t(x) - y_t(x')`` (completeness): ``return_convergence_delta=True`` returns the
    gap, and ``n_steps="auto"`` doubles ``m`` per example, from 4, until it is small.
    The path points run in batched passes whose backward pass stops at the layer.
    Explain models in eval mode. BatchNorm, autocast, checkpointing, transformer layers
    and the path engine: :doc:`/design_notes/rsi_grad_cam`.

    Parameters
    ----------
    forward_func : callable
        The model, or a function of the inputs returning a tensor (a Hugging Face
        ``ModelOutput``'s ``.logits`` or a dict's ``"logits"`` are used).
    layer : nn.Module
        The layer explained; it must run exactly once per forward pass.
    device_ids : list of int, optional
        Kept for Captum's signature.

    Attributes
    ----------
    last_n_steps : Tensor or None
        The path intervals ``m`` each example of the last call used, ``(B,)`` long.

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
        forward_func = checked_layer_method(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.last_n_steps: torch.Tensor | None = None

    def has_convergence_delta(self) -> bool:
        """True: ``attribute(..., return_convergence_delta=True)`` gives the completeness gap."""
        return True

    def compute_convergence_delta(
        self,
        attributions: TensorOrTuple,
        start_point: BaselineType,
        end_point: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Not available (a map's sum is not RSI's sum): raises ``NotImplementedError``."""
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
        self, inputs: TensorOrTuple, target: TargetType = None,
        additional_forward_args: Any = None, baselines: BaselineType = None,
        n_steps: int | Literal["auto"] = 50, internal_batch_size: int | None = None,
        output_transform: OutputTransform = None, variant: str = "plain",
        relu_attributions: bool = True, attribute_to_layer_input: bool = False,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_convergence_delta: bool = False, tolerance: float = 1e-2,
        max_steps: int = 256, attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None, progress: bool | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """RSI-Grad-CAM maps ``(B, 1, h, w)`` at the layer's resolution, in the inputs' dtype.

        ``inputs``, ``target``, ``additional_forward_args``, ``baselines`` (default zeros),
        ``internal_batch_size`` (rows per pass; no effect on the maps), ``relu_attributions``,
        ``attribute_to_layer_input``, ``reshape_transform``, ``attr_dim_summation`` and
        ``grad_kwargs`` are Captum's. ``target`` may also be a callable
        ``score(output) -> (B,)`` or a list of them, one per example; ``None`` is the class
        predicted for the input. ``n_steps`` is ``m``, or ``'auto'``: per example the first
        ``m = 4, 8, ...`` whose completeness gap is at most
        ``tolerance * |y_t(x) - y_t(x')|``, up to ``max_steps``. ``output_transform``
        (None, ``'softmax'`` as in the paper, ``'log_softmax'`` or a callable) applies
        before the target is selected. ``variant='unit_selection'`` keeps units with
        ``A_m > 0``, ``RSI > 0`` and ``A_m > A_0``; ``'relu_gradients'`` integrates
        ``relu(G_l)``. ``return_convergence_delta`` (``'plain'`` only) also returns the
        gaps ``(B,)``. ``progress`` shows a ``tqdm`` bar (``None``: long calls on a terminal).

        Raises
        ------
        ValueError, TypeError
            For a bad argument (named in the message), a layer that does not run once or a
            score that does not depend on the layer.
        RuntimeError
            Inside ``torch.inference_mode()``.
        """
        settings = _checked_settings(
            self.forward_func, inputs, target, additional_forward_args, baselines, n_steps,
            internal_batch_size, output_transform, variant, reshape_transform,
            return_convergence_delta, tolerance, max_steps, relu_attributions,
            attr_dim_summation, grad_kwargs, progress,
        )
        warn_if_training(self.forward_func, "LayerRSIGradCam")
        passes, points = settings.planned_work()
        show = show_progress(progress, passes)
        with (
            preserved_model(settings.model) as hooks,
            settings.batchnorm_statistics_kept(),
            progress_bar(show, points, "LayerRSIGradCam", "point") as bar,
        ):
            tap = LayerTap(self.layer, hooks, use_input=attribute_to_layer_input)
            runner = PathRunner(self.forward_func, tap, settings, bar)
            results = [runner.integrate(group) for group in settings.groups()]
        maps, deltas, counts = zip(*results)
        self.last_n_steps = torch.cat(counts)
        attributions = torch.cat(maps).to(settings.out_dtype)
        if return_convergence_delta:
            return attributions, torch.cat(deltas).to(settings.out_dtype)
        return attributions


def _checked_settings(
    forward_func: Callable[..., Any], inputs: TensorOrTuple, target: TargetType,
    additional_forward_args: Any, baselines: BaselineType, n_steps: int | str,
    internal_batch_size: int | None, output_transform: OutputTransform, variant: str,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
    return_convergence_delta: bool, tolerance: float, max_steps: int,
    relu_attributions: bool, attr_dim_summation: bool,
    grad_kwargs: dict[str, Any] | None, progress: bool | None,
) -> PathSettings:
    """Check the arguments of ``attribute`` (in this order) and plan the passes."""
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
    model = find_module(forward_func)
    batch = check_attribution_inputs(inputs_tuple, model)
    baselines_tuple = format_baselines(inputs_tuple, baselines)
    target = per_example_score_targets(target)
    args = format_additional_args(additional_forward_args)
    if internal_batch_size is None:
        internal_batch_size = automatic_pass_rows(inputs_tuple)
    fixed_steps = None if auto else int(n_steps)
    plan = plan_path(
        batch, AUTO_START_STEPS if fixed_steps is None else fixed_steps, internal_batch_size
    )
    return PathSettings(
        model=model, batch=batch, inputs=inputs_tuple, baselines=baselines_tuple,
        target=target, args=args, per_example=per_example_flags(args, batch),
        out_dtype=functools.reduce(torch.promote_types, (x.dtype for x in inputs_tuple)),
        n_steps=fixed_steps, tolerance=float(tolerance), max_steps=max_steps,
        internal_batch_size=internal_batch_size, plan=plan, transform=transform,
        reshape_transform=reshape_transform, variant=variant,
        relu_attributions=relu_attributions, attr_dim_summation=attr_dim_summation,
        grad_kwargs=grad_kwargs,
    )


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
