"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel and Hu, CVPR Workshops 2020).

:class:`LayerScoreCam`'s docstring gives the maths. One forward pass keeps the layer's
activation (:meth:`~captum_regularized._internal.layer_tap.LayerTap.run_forward_only`,
no autograd); every channel then masks the input, and the masked inputs of all
examples and channels run in forward passes of at most ``internal_batch_size`` rows,
each mask built on the fly for its pass (:func:`channel_masks`), so memory does not
grow with the number of channels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from captum_regularized._internal.batch_args import is_per_example
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
"""Input elements per masked pass on other devices when ``internal_batch_size`` is not given."""


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
    inputs: tuple[torch.Tensor, ...],
    internal_batch_size: object,
    interpolate_mode: object,
    align_corners: object,
    channel_softmax: object,
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


class _TargetScores:
    """The target's score for any rows of masked inputs; flat row ``r`` is example ``r // K``.

    Built from the output of the unmasked inputs, which validates the target once and
    fixes the class of ``target=None`` (the prediction for the input itself).
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
        self,
        output: torch.Tensor,
        examples: torch.Tensor,
        example_ids: Callable[[], Sequence[int]],
    ) -> torch.Tensor:
        if self.classes is not None:
            return output.gather(1, self.classes[examples][:, None])[:, 0]
        target = self.target
        if isinstance(target, list):  # one entry per example: one per row
            target = [target[i] for i in example_ids()]  # type: ignore[assignment]
        return target_scores(output, target)


def _masked_inputs(
    inputs: tuple[torch.Tensor, ...],
    baselines: tuple[torch.Tensor, ...] | None,
    maps: torch.Tensor,
    examples: torch.Tensor,
    mode: str,
    align_corners: bool,
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


class LayerScoreCam(LayerCam):
    r"""Score-CAM: channels weighted by the score of the input masked with each channel.

    Score-CAM (Wang et al., "Score-CAM: Score-weighted visual explanations for
    convolutional neural networks", CVPR Workshops 2020) needs no gradient. With ``A``
    the layer's activation ``(B, K, h, w)`` for the input ``x``, every channel ``k`` is
    upsampled to the input's size and min-max scaled to a mask ``M_k`` in ``[0, 1]``
    (a constant channel gives ``M_k = 0``), the input is masked with it, and the
    masked input's target score ``f_c`` (after ``output_transform``) gives the weight:

    .. math::

        x_k = x_b + M_k \odot (x - x_b), \qquad
        S_k = f_c(x_k) - f_c(x_b), \qquad
        \alpha_k = \frac{e^{S_k}}{\sum_{k'} e^{S_{k'}}}, \qquad
        L = \mathrm{relu}\Big(\sum_k \alpha_k A_k\Big).

    The baseline ``x_b`` is zero by default, so that ``x_k = M_k \odot x`` is the
    paper's masked input, and ``S_k`` is the paper's "increase of confidence". With
    ``channel_softmax=True`` (the default) the scores are normalised over the channels
    as in the paper's Algorithm 1 and in pytorch-grad-cam; the ``f_c(x_b)`` term then
    cancels and is not computed. ``channel_softmax=False`` takes ``alpha_k = S_k``
    itself (then a channel whose mask is zero, ``x_k = x_b``, gets weight 0 up to
    rounding).

    What ``f_c`` is: ``output_transform=None`` (the default, Captum's convention) scores
    what ``forward_func`` returns, usually the logit, which is what pytorch-grad-cam's
    ``ScoreCAM`` with ``ClassifierOutputTarget`` does; ``output_transform="softmax"``
    scores the class probability, as the paper does. With the defaults
    (``interpolate_mode="bilinear"``, ``align_corners=True``, zero baseline) the maps
    are pytorch-grad-cam's ``ScoreCAM`` maps before its min-max scaling and resizing.

    The cost is one forward pass per example and channel (``B * K`` masked inputs, in
    passes of at most ``internal_batch_size`` rows, the masks of a pass made when it
    runs) plus one pass of the inputs; no backward pass. Explain models in eval mode: a
    model left in train mode is run as found, so its BatchNorm layers normalise each
    pass with that pass's statistics and the maps depend on ``internal_batch_size``;
    the running statistics are never changed. The model is left as found (mode, flags,
    hooks, BatchNorm statistics), and nothing needs autograd, so it also runs inside
    ``torch.inference_mode()``. Scores and weights are float32 or wider; maps come
    back in the inputs' floating dtype, also under ``torch.autocast``.

    Parameters
    ----------
    forward_func : callable
        The model (or any function of the inputs) returning a tensor, a Hugging Face
        ``ModelOutput`` (its ``.logits`` are used) or a dict with key ``"logits"``. An
        ``nn.DataParallel`` model runs its wrapped module, on that module's device.
    layer : nn.Module
        The layer whose channels become masks, usually the last convolutional block. It
        must run exactly once per forward pass and give one tensor.
    device_ids : list of int, optional
        Kept for Captum's signature.

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
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = True,
        attr_dim_summation: bool = True,
        *,
        baselines: BaselineType = None,
        internal_batch_size: int | None = None,
        output_transform: OutputTransform = None,
        channel_softmax: bool = True,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        interpolate_mode: str = "bilinear",
        align_corners: bool = True,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Score-CAM maps of shape ``(B, 1, h, w)`` in the layer's resolution.

        The positional arguments are those of ``captum.attr.LayerGradCam.attribute``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point images ``(B, C, H, W)`` (a tuple for multi-input models: each
            is masked with the maps upsampled to its own size); not modified.
        target : int, tuple, list, Tensor, callable or None
            Captum's target forms; ``None`` on a ``(B, classes > 1)`` output is the
            class predicted for the unmasked input. pytorch-grad-cam's target callables
            are accepted too (``ClassifierOutputTarget(k)``, any
            ``score(output) -> (rows,)``, or a list of callables, one per example, each
            given one output row), applied after ``output_transform``.
        additional_forward_args : any, optional
            Extra arguments for ``forward_func`` after the inputs; tensors whose dim 0
            is the batch follow their example into the masked passes, anything else is
            passed unchanged to every pass.
        attribute_to_layer_input : bool
            Use the layer's (first) input instead of its output.
        relu_attributions : bool
            Apply the final ReLU (Score-CAM has it; default True).
        attr_dim_summation : bool
            Sum the weighted channels into one map (default); ``False`` returns the
            per-channel maps ``alpha_k A_k``, ``(B, K, h, w)`` (ReLU applied to each).
        baselines : Tensor, number or tuple, optional
            ``x_b``, in Captum's forms (one per input, of the input's shape or with a
            batch of one); default zeros.
        internal_batch_size : int, optional
            The most masked inputs per forward pass; bounds peak memory. ``None``:
            about 2**20 input elements per pass on CPUs and 2**24 on other devices.
            The result does not depend on it (for a model in eval mode).
        output_transform : None, 'softmax', 'log_softmax' or callable
            Applied to the model output before the target is selected (see above).
        channel_softmax : bool
            Normalise the scores with a softmax over the channels (default, the paper's
            Algorithm 1 and pytorch-grad-cam); ``False`` uses ``S_k`` itself.
        reshape_transform : callable, optional
            Turns the layer's activation into ``(B, K, h, w)``, e.g.
            :func:`~captum_regularized.attr.vit_tokens_to_map`.
        interpolate_mode : str
            How the channel maps are upsampled to the input size, one of
            :data:`INTERPOLATE_MODES`.
        align_corners : bool
            For the ``bilinear`` and ``bicubic`` modes; ``True`` (the default) is
            pytorch-grad-cam's ``UpsamplingBilinear2d``, ``False`` the half-pixel
            convention of Captum's ``LayerAttribution.interpolate``.
        progress : bool or None
            Show a ``tqdm`` progress bar with an ETA on stderr, counting the masked
            inputs (``B x K``). ``None`` (default): when the call runs more than 64
            masked forward passes (``internal_batch_size`` inputs each) and stderr is a
            terminal; ``True``: always; ``False``: never. The maps do not depend on it.

        Returns
        -------
        Tensor
            ``(B, 1, h, w)`` (``(B, K, h, w)`` without ``attr_dim_summation``) in the
            inputs' floating dtype; upsample with ``LayerAttribution.interpolate``.

        Raises
        ------
        ValueError
            Non-finite inputs, inputs without a shared batch size, on another device
            than the model or not 4-D; a bad ``target`` (out of range, wrong length); a
            baseline of the wrong shape; ``internal_batch_size < 1``; an unknown
            ``interpolate_mode`` or ``output_transform``; an output that does not keep
            the batch in dim 0; a layer that does not run or runs twice; an activation
            that is not 4-D after ``reshape_transform``.
        TypeError
            Non-tensor or non-floating inputs, a target of the wrong type, wrongly typed
            options (``internal_batch_size``, the flags, ``reshape_transform``,
            ``output_transform``, a bool as ``baselines``).

        Warns
        -----
        UserWarning
            When the model has BatchNorm or Dropout modules in train mode (call
            ``model.eval()`` first); once per call site under Python's default filter.
        """
        # no autograd needed: no check_autograd_available, so inference mode is fine
        inputs_tuple, _ = format_inputs(inputs)
        args = format_additional_args(additional_forward_args)
        model = find_module(self.forward_func)
        batch = check_attribution_inputs(inputs_tuple, model)
        _check_arguments(inputs_tuple, internal_batch_size, interpolate_mode, align_corners,
                       channel_softmax)
        check_reshape_transform(reshape_transform)
        transform = _resolve_output_transform(output_transform)
        base = None if baselines is None else format_baselines(inputs_tuple, baselines)
        target = per_example_score_targets(target)
        rows_per_pass = _rows_per_pass(inputs_tuple, internal_batch_size)
        check_progress(progress)
        warn_if_training(self.forward_func, "LayerScoreCam")
        with preserved_model(model) as hooks, kept_batchnorm_statistics(model), torch.no_grad():
            tap = LayerTap(self.layer, hooks, use_input=attribute_to_layer_input)
            output, activation = tap.run_forward_only(self.forward_func, inputs_tuple, args)
            check_output_batch(output, batch)
            activations = layer_maps(activation, reshape_transform)
            channels = activations.shape[1]
            score = _TargetScores(transform(output), target, channels)
            flat_maps = activations.reshape(batch * channels, 1, *activations.shape[2:])
            scores = activations.new_empty((batch * channels,))
            total = batch * channels
            show = show_progress(progress, math.ceil(total / rows_per_pass))
            with progress_bar(show, total, "LayerScoreCam", "mask") as bar:
                for start in range(0, total, rows_per_pass):
                    stop = min(start + rows_per_pass, total)
                    examples = torch.arange(start, stop, device=flat_maps.device) // channels
                    masked = _masked_inputs(inputs_tuple, base, flat_maps[start:stop],
                                            examples, interpolate_mode, align_corners)
                    out = run_forward(self.forward_func, masked,
                                      _rows_of(args, batch, examples))
                    check_output_batch(out, stop - start)
                    scores[start:stop] = score.for_rows(transform(out), start)
                    bar.update(stop - start)  # host-only
            weights = scores.reshape(batch, channels)
            if channel_softmax:
                weights = torch.softmax(weights, dim=1)
            else:  # the increase of confidence over the baseline
                references = tuple(
                    torch.zeros_like(x) if base is None else base[i].expand_as(x)
                    for i, x in enumerate(inputs_tuple)
                )
                out = run_forward(self.forward_func, references, args)
                check_output_batch(out, batch)
                weights = weights - score.for_examples(transform(out))[:, None]
        maps = weighted_maps(weights, activations, relu_attributions, attr_dim_summation)
        out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in inputs_tuple))
        return maps.to(out_dtype)


def _rows_of(
    args: tuple[Any, ...] | None, batch: int, examples: torch.Tensor
) -> tuple[Any, ...] | None:
    """The additional forward args of a pass: per-example tensors follow their examples."""
    if args is None:
        return None
    return tuple(
        arg[examples] if is_per_example(arg, batch) else arg for arg in args
    )
