"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel and Hu, CVPR Workshops 2020).

The masked inputs of all examples and channels run in forward passes of at most
``internal_batch_size`` rows, each pass's masks made when it runs (:func:`channel_masks`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized._internal.batch_args import rows_of_args
from captum_regularized._internal.captum_compat import (
    BaselineType,
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_baselines,
    format_inputs,
    log_usage,
    run_forward,
)
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.layer_maps import (
    LayerCam,
    ReshapeTransform,
    check_output_batch,
    check_reshape_transform,
    layer_maps,
    weighted_maps,
)
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
    check_progress,
    progress_bar,
    show_progress,
    warn_if_training,
)

__all__ = ["LayerScoreCam", "channel_masks"]

OutputTransform = Literal["softmax", "log_softmax"] | Callable[[torch.Tensor], torch.Tensor] | None
INTERPOLATE_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")
"""The ``interpolate_mode`` values (2-D modes of ``torch.nn.functional.interpolate``)."""
CPU_PASS_ELEMENTS = 2**20
"""Input elements per masked pass on CPUs when ``internal_batch_size`` is not given."""
ACCELERATOR_PASS_ELEMENTS = 2**24
"""The same on other devices."""


class LayerScoreCam(LayerCam):
    r"""Score-CAM: channels weighted by the score of the input masked with each channel.

    With ``A`` the layer's activation ``(B, K, h, w)`` for the input ``x``, every channel
    ``k`` is upsampled to the input's size and min-max scaled to a mask ``M_k`` in
    ``[0, 1]`` (a constant channel gives ``M_k = 0``); the masked input's target score
    ``f_c`` (after ``output_transform``) gives the weight. No gradient is needed:

    .. math::

        x_k = x_b + M_k \odot (x - x_b), \qquad
        S_k = f_c(x_k) - f_c(x_b), \qquad
        \alpha_k = \frac{e^{S_k}}{\sum_{k'} e^{S_{k'}}}, \qquad
        L = \mathrm{relu}\Big(\sum_k \alpha_k A_k\Big).

    The baseline ``x_b`` is zero by default (the paper's ``M_k \odot x``). With
    ``channel_softmax=True`` (the default, the paper's Algorithm 1) the ``f_c(x_b)``
    term cancels and is not computed; ``channel_softmax=False`` takes ``alpha_k = S_k``.
    It costs ``B * K`` masked forward passes (:doc:`/design_notes/attribution_maps`).

    Parameters
    ----------
    forward_func, layer, device_ids
        As in ``captum.attr.LayerGradCam``: the model, the layer whose channels become
        masks (it runs once per forward pass and gives one tensor), unused device ids.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> cam = LayerScoreCam(model, model.block3)
    >>> maps = cam.attribute(torch.rand(2, 3, 16, 16), target=1, internal_batch_size=8)
    >>> maps.shape, bool((maps >= 0).all())
    (torch.Size([2, 1, 4, 4]), True)
    """

    @log_usage()
    def attribute(  # type: ignore[override]
        self, inputs: TensorOrTuple, target: TargetType = None,
        additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
        relu_attributions: bool = True, attr_dim_summation: bool = True, *,
        baselines: BaselineType = None, internal_batch_size: int | None = None,
        output_transform: OutputTransform = None, channel_softmax: bool = True,
        reshape_transform: ReshapeTransform | None = None, interpolate_mode: str = "bilinear",
        align_corners: bool = True, progress: bool | None = None,
    ) -> torch.Tensor:
        """Score-CAM maps ``(B, 1, h, w)`` in the layer's resolution, in the inputs' dtype.

        The positional arguments are those of ``captum.attr.LayerGradCam.attribute``;
        ``inputs`` are images ``(B, C, H, W)``.

        Parameters
        ----------
        baselines : Tensor, number or tuple, optional
            ``x_b``, in Captum's forms; default zeros.
        internal_batch_size : int, optional
            The most masked inputs per forward pass (default: about 2**20 input elements
            on CPUs, 2**24 elsewhere); the maps do not depend on it.
        output_transform : None, 'softmax', 'log_softmax' or callable
            Applied to the model output before the target is selected.
        reshape_transform, interpolate_mode, align_corners
            Lay out token activations; upsample the masks (:data:`INTERPOLATE_MODES`;
            ``align_corners=True`` as pytorch-grad-cam, ``False`` as Captum).
        channel_softmax, progress
            See above; ``progress`` counts the masked inputs.

        Raises
        ------
        ValueError, TypeError
            For bad inputs (also not 4-D), target, baselines, options or layer.
        """
        passes = _MaskedPasses.checked(
            self.forward_func, inputs, target, additional_forward_args, baselines,
            internal_batch_size, output_transform, channel_softmax, reshape_transform,
            interpolate_mode, align_corners, progress)
        warn_if_training(self.forward_func, "LayerScoreCam")
        model = passes.model
        with preserved_model(model) as hooks, kept_batchnorm_statistics(model), torch.no_grad():
            tap = LayerTap(self.layer, hooks, use_input=attribute_to_layer_input)
            activations = passes.activations(tap, reshape_transform)
            weights = passes.channel_scores(activations, progress)
            if channel_softmax:
                weights = torch.softmax(weights, dim=1)
            else:  # the increase of confidence over the baseline
                weights = weights - passes.baseline_scores()[:, None]
        maps = weighted_maps(weights, activations, relu_attributions, attr_dim_summation)
        out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in passes.inputs))
        return maps.to(out_dtype)


@dataclasses.dataclass
class _MaskedPasses:
    """A call's checked arguments and its forward passes: unmasked, masked and baseline."""

    forward_func: Callable[..., Any]
    model: nn.Module | None
    inputs: tuple[torch.Tensor, ...]
    args: tuple[Any, ...] | None
    batch: int
    baselines: tuple[torch.Tensor, ...] | None
    transform: Callable[[torch.Tensor], torch.Tensor]
    target: TargetType
    rows_per_pass: int
    mode: str
    align_corners: bool
    score: _TargetScores = dataclasses.field(init=False)

    @classmethod
    def checked(
        cls, forward_func: Callable[..., Any], inputs: TensorOrTuple, target: TargetType,
        additional_forward_args: Any, baselines: BaselineType, internal_batch_size: int | None,
        output_transform: OutputTransform, channel_softmax: bool,
        reshape_transform: ReshapeTransform | None, interpolate_mode: str, align_corners: bool,
        progress: bool | None,
    ) -> _MaskedPasses:
        """Every argument of ``attribute`` checked (no autograd needed: inference mode is fine)."""
        inputs_tuple, _ = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        model = find_module(forward_func)
        batch = check_attribution_inputs(inputs_tuple, model)
        _check_arguments(inputs_tuple, internal_batch_size, interpolate_mode, align_corners,
                         channel_softmax)
        check_reshape_transform(reshape_transform)
        transform = _resolve_output_transform(output_transform)
        base = None if baselines is None else format_baselines(inputs_tuple, baselines)
        target = per_example_score_targets(target)
        rows_per_pass = _rows_per_pass(inputs_tuple, internal_batch_size)
        check_progress(progress)
        return cls(forward_func, model, inputs_tuple, args, batch, base, transform, target,
                   rows_per_pass, interpolate_mode, align_corners)

    def activations(
        self, tap: LayerTap, reshape_transform: ReshapeTransform | None
    ) -> torch.Tensor:
        """The layer's maps ``A`` ``(B, K, h, w)`` of the unmasked inputs; fixes the target."""
        output, activation = tap.run_forward_only(self.forward_func, self.inputs, self.args)
        check_output_batch(output, self.batch)
        activations = layer_maps(activation, reshape_transform)
        self.score = _TargetScores(self.transform(output), self.target, activations.shape[1])
        return activations

    def channel_scores(self, activations: torch.Tensor, progress: bool | None) -> torch.Tensor:
        """``f_c(x_k)`` ``(B, K)``: flat row ``r`` is example ``r // K``, channel ``r % K``."""
        batch, channels = activations.shape[:2]
        flat_maps = activations.reshape(batch * channels, 1, *activations.shape[2:])
        scores = activations.new_empty((batch * channels,))
        total = batch * channels
        rows_per_pass = self.rows_per_pass
        show = show_progress(progress, math.ceil(total / rows_per_pass))
        with progress_bar(show, total, "LayerScoreCam", "mask") as bar:
            for start in range(0, total, rows_per_pass):
                stop = min(start + rows_per_pass, total)
                examples = torch.arange(start, stop, device=flat_maps.device) // channels
                masked = _masked_inputs(self.inputs, self.baselines, flat_maps[start:stop],
                                        examples, self.mode, self.align_corners)
                args = rows_of_args(self.args, examples, batch)
                out = run_forward(self.forward_func, masked, args)
                check_output_batch(out, stop - start)
                scores[start:stop] = self.score.for_rows(self.transform(out), start)
                bar.update(stop - start)  # host-only
        return scores.reshape(batch, channels)

    def baseline_scores(self) -> torch.Tensor:
        """``f_c(x_b)`` ``(B,)``: one pass of the baselines (zeros by default)."""
        references = tuple(
            torch.zeros_like(x) if self.baselines is None else self.baselines[i].expand_as(x)
            for i, x in enumerate(self.inputs)
        )
        out = run_forward(self.forward_func, references, self.args)
        check_output_batch(out, self.batch)
        return self.score.for_examples(self.transform(out))


def _masked_inputs(
    inputs: tuple[torch.Tensor, ...], baselines: tuple[torch.Tensor, ...] | None,
    maps: torch.Tensor, examples: torch.Tensor, mode: str, align_corners: bool,
) -> tuple[torch.Tensor, ...]:
    """``x_b + M ⊙ (x - x_b)`` for rows ``(example, channel)``: ``maps`` are their ``A_k``."""
    masks: dict[tuple[int, int], torch.Tensor] = {}  # inputs of one size share the masks
    masked = []
    for index, x in enumerate(inputs):
        size = (x.shape[2], x.shape[3])
        if size not in masks:
            masks[size] = channel_masks(maps, size, mode, align_corners).to(x.dtype)
        rows = x[examples]
        if baselines is None:
            masked.append(rows * masks[size])
            continue
        base = baselines[index]
        reference = base if base.shape[0] == 1 else base[examples]
        masked.append(reference + masks[size] * (rows - reference))
    return tuple(masked)


class _TargetScores:
    """The target's score for any rows of masked inputs; flat row ``r`` is example ``r // K``.

    Built from the unmasked inputs' output: it checks the target once and fixes the class
    of ``target=None`` (the prediction for the input itself).
    """

    def __init__(self, output: torch.Tensor, target: TargetType, channels: int) -> None:
        self.target = target
        self.channels = channels
        self.classes: torch.Tensor | None = None
        if output.dim() == 2 and not is_score_target(target):
            self.classes = class_indices(output, target)
        else:
            target_scores(output, target)

    def for_rows(self, output: torch.Tensor, start: int) -> torch.Tensor:
        """Scores ``(rows,)`` of a masked pass whose rows start at flat row ``start``."""
        rows = range(start, start + output.shape[0])
        examples = torch.arange(rows.start, rows.stop, device=output.device) // self.channels
        return self._select(output, examples, lambda: [row // self.channels for row in rows])

    def for_examples(self, output: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of a pass with one row per example, in order."""
        examples = torch.arange(output.shape[0], device=output.device)
        return self._select(output, examples, lambda: range(output.shape[0]))

    def _select(
        self, output: torch.Tensor, examples: torch.Tensor, example_ids: Callable[[], Sequence[int]]
    ) -> torch.Tensor:
        if self.classes is not None:
            return output.gather(1, self.classes[examples][:, None])[:, 0]
        target = self.target
        if isinstance(target, list):  # one entry per example: one per row
            target = [target[i] for i in example_ids()]  # type: ignore[assignment]
        return target_scores(output, target)


def channel_masks(
    maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = True
) -> torch.Tensor:
    """Activation maps ``(n, 1, h, w)`` upsampled to ``size`` and min-max scaled to ``[0, 1]``.

    Each upsampled map ``u`` is scaled on its own, ``(u - min u) / (max u - min u)`` over
    its pixels. A map that is constant before upsampling gives a zero mask (its
    upsampled copy may differ from a constant by rounding, which scaling would blow up
    to a mask of noise). ``align_corners`` applies to the ``bilinear`` and ``bicubic``
    modes (``True`` is ``torch.nn.UpsamplingBilinear2d``).

    Examples
    --------
    >>> channel_masks(torch.tensor([[[[0.0, 2.0]]], [[[3.0, 3.0]]]]), (1, 3))[:, 0, 0].tolist()
    [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]
    """
    corners = align_corners if mode in ("bilinear", "bicubic") else None
    upsampled = F.interpolate(maps, size=size, mode=mode, align_corners=corners)
    flat = upsampled.flatten(1)
    low = flat.amin(dim=1)[:, None, None, None]
    span = flat.amax(dim=1)[:, None, None, None] - low
    varies = (maps.flatten(1).amax(dim=1) > maps.flatten(1).amin(dim=1))[:, None, None, None]
    varies = varies & (span > 0)
    scaled = (upsampled - low) / torch.where(varies, span, torch.ones_like(span))
    return torch.where(varies, scaled, torch.zeros_like(scaled))


def _resolve_output_transform(
    output_transform: OutputTransform,
) -> Callable[[torch.Tensor], torch.Tensor]:
    named = {
        "softmax": lambda out: torch.softmax(out, dim=1),
        "log_softmax": lambda out: torch.log_softmax(out, dim=1),
    }
    if output_transform is None:
        return lambda out: out
    if isinstance(output_transform, str) and output_transform in named:
        return named[output_transform]
    if callable(output_transform) and not isinstance(output_transform, str):
        return output_transform
    error = ValueError if isinstance(output_transform, str) else TypeError
    raise error(
        "output_transform must be None, 'softmax', 'log_softmax' or a callable, got "
        f"{output_transform!r}"
    )


def _check_arguments(
    inputs: tuple[torch.Tensor, ...], internal_batch_size: object, interpolate_mode: object,
    align_corners: object, channel_softmax: object,
) -> None:
    for index, x in enumerate(inputs):
        if x.dim() != 4:
            raise ValueError(
                "LayerScoreCam masks every input with the upsampled channel maps: inputs"
                f"[{index}] must have shape (batch, channels, height, width), got "
                f"{tuple(x.shape)} (pass other tensors as additional_forward_args)"
            )
    if internal_batch_size is not None:
        if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
            raise TypeError(
                f"internal_batch_size must be an int or None, got "
                f"{type(internal_batch_size).__name__}"
            )
        if internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    if interpolate_mode not in INTERPOLATE_MODES:
        raise ValueError(
            f"interpolate_mode must be one of {list(INTERPOLATE_MODES)}, got {interpolate_mode!r}"
        )
    for name, flag in (("align_corners", align_corners), ("channel_softmax", channel_softmax)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _rows_per_pass(inputs: tuple[torch.Tensor, ...], internal_batch_size: int | None) -> int:
    """Masked rows per forward pass: the caller's bound, or about a fixed input size."""
    if internal_batch_size is not None:
        return internal_batch_size
    per_row = sum(x[0].numel() for x in inputs) if inputs[0].shape[0] else 1
    budget = CPU_PASS_ELEMENTS if inputs[0].device.type == "cpu" else ACCELERATOR_PASS_ELEMENTS
    return max(1, budget // max(per_row, 1))


