"""What every perturbation metric does before its maths: check, prepare, forward in chunks.

:func:`prepare_batch` checks a batch and makes one map value per pixel; the
:class:`PreparedBatch` it returns runs the model on images built from it, so that a
metric writes only how it perturbs the images and what it makes of the scores
(:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from captum_regularized._internal.batch_args import rows_of_args
from captum_regularized._internal.captum_compat import (
    TargetType,
    format_additional_args,
    run_forward,
)
from captum_regularized._internal.checks import (
    check_inputs_fit_model,
    check_same_device,
    every_map_zero_warning,
)
from captum_regularized._internal.model_state import find_module, preserved_model
from captum_regularized._internal.pixel_maps import CHANNEL_REDUCTIONS, per_pixel_map
from captum_regularized._internal.targets import class_indices

__all__ = [
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "PreparedBatch",
    "check_map_settings",
    "pixel_ranks",
    "prepare_batch",
]

DEFAULT_INTERNAL_BATCH_SIZE = 128
"""Images per forward pass when a metric is called with ``internal_batch_size=None``."""

Builder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _chunk_size(internal_batch_size: int | None) -> int:
    """Return the chunk size; ``None`` means :data:`DEFAULT_INTERNAL_BATCH_SIZE`."""
    if internal_batch_size is None:
        return DEFAULT_INTERNAL_BATCH_SIZE
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
        raise TypeError(
            f"internal_batch_size must be an int or None, got {type(internal_batch_size).__name__}"
        )
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    return internal_batch_size


def check_map_settings(channel_reduction: str, internal_batch_size: int | None) -> None:
    """The settings every perturbation metric shares, checked before any model runs."""
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(
            f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}"
        )
    _chunk_size(internal_batch_size)


def _check_image_batch(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() != 4:
        hint = "; for one (C, H, W) image, add its batch dimension: inputs.unsqueeze(0)"
        hint = hint if inputs.dim() == 3 else ""
        raise ValueError(
            "inputs must be an image batch of shape (batch, channels, height, width), "
            f"got shape {tuple(inputs.shape)}{hint}"
        )
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")


def pixel_ranks(maps: torch.Tensor, *, zeros_last: bool = False) -> torch.Tensor:
    """Rank of every pixel in decreasing map order, ``(B, H*W)``, 0 = highest.

    Ties keep raster order; with ``zeros_last`` exact zeros rank after every other pixel.
    """
    flat = maps.reshape(maps.shape[0], -1)
    if zeros_last:
        flat = torch.where(flat == 0, torch.full_like(flat, float("-inf")), flat)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


@dataclass(frozen=True)
class PreparedBatch:
    """A checked batch of a perturbation metric (:func:`prepare_batch`) and its model.

    ``inputs`` are the detached images ``(B, C, H, W)``, ``maps`` one float value per
    pixel ``(B, 1, H, W)``; the methods run the model on images built from them.
    """

    forward_func: Callable[..., Any]
    inputs: torch.Tensor
    maps: torch.Tensor
    internal_batch_size: int | None
    additional_forward_args: Any

    @property
    def size(self) -> int:
        """Number of examples ``B``."""
        return int(self.inputs.shape[0])

    def evaluate(self, count: int, build: Builder, reduce: Reducer) -> torch.Tensor:
        """Evaluate ``count`` built images, ``internal_batch_size`` per forward pass.

        ``build(index) -> (images, example_index)`` makes the images of a 1-D index tensor
        (per-example ``additional_forward_args`` follow their example);
        ``reduce(output, example_index)`` keeps one value per image.
        """
        chunk = _chunk_size(self.internal_batch_size)
        args = format_additional_args(self.additional_forward_args)
        pieces: list[torch.Tensor] = []
        with preserved_model(find_module(self.forward_func), eval_mode=True), torch.no_grad():
            for start in range(0, count, chunk):
                index = torch.arange(start, min(start + chunk, count), device=self.inputs.device)
                images, example_index = build(index)
                selected = rows_of_args(args, example_index, self.size)
                output = run_forward(self.forward_func, (images,), selected)
                pieces.append(reduce(output, example_index))
        if not pieces:
            raise ValueError("evaluate needs at least one image (count >= 1)")
        return torch.cat(pieces)

    def clean_outputs(self) -> torch.Tensor:
        """The model's outputs on the unperturbed images."""
        return self.evaluate(
            self.size, lambda index: (self.inputs[index], index), lambda output, index: output
        )

    def target_probability(
        self, target: TargetType, *, apply_softmax: bool = True
    ) -> tuple[Reducer, torch.Tensor]:
        """The reducer scoring each example's target class (Captum forms; ``None``: the
        predicted class), and the clean scores ``(B,)``."""
        outputs = self.clean_outputs()
        classes = class_indices(outputs, target)

        def reduce(output: torch.Tensor, example_index: torch.Tensor) -> torch.Tensor:
            if output.dim() != 2:
                raise ValueError(
                    "the model output must have shape (batch, classes); "
                    f"got shape {tuple(output.shape)}"
                )
            scores = output.float()
            if apply_softmax:
                scores = scores.softmax(dim=1)
            return scores.gather(1, classes[example_index][:, None])[:, 0]

        return reduce, reduce(outputs, torch.arange(self.size, device=self.inputs.device))

    def ranked_scores(
        self,
        counts: torch.Tensor,
        top: torch.Tensor,
        rest: torch.Tensor,
        reduce: Reducer,
        *,
        zeros_last: bool = False,
    ) -> torch.Tensor:
        """Scores ``(K, B, ...)`` of images whose ``counts[k, b]`` pixels ranked highest by
        :func:`pixel_ranks` of :attr:`maps` come from ``top[b]``, the rest from ``rest[b]``
        (deletion puts the substrate in ``top``, insertion the image)."""
        ranks = pixel_ranks(self.maps, zeros_last=zeros_last)
        steps, batch = counts.shape
        height, width = top.shape[2:]

        def build(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            step, example = index // batch, index % batch
            taken = ranks[example] < counts[step, example][:, None]
            taken = taken.view(-1, 1, height, width)
            return torch.where(taken, top[example], rest[example]), example

        values = self.evaluate(steps * batch, build, reduce)
        return values.view(steps, batch, *values.shape[1:])


def prepare_batch(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    *,
    channel_reduction: str = "max",
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    refuse_empty: str | None = None,
) -> PreparedBatch:
    """The preamble of every perturbation metric: check the batch, make per-pixel maps.

    With ``refuse_empty`` (the metric's name) an empty batch is a ``ValueError``; maps
    that are all zero get a ``UserWarning``.
    """
    _check_image_batch(inputs)
    batch, _, height, width = inputs.shape
    if refuse_empty is not None and batch == 0:
        raise ValueError(f"{refuse_empty} needs at least one example; inputs has batch size 0")
    module = find_module(forward_func)
    check_same_device((inputs,), module)
    check_inputs_fit_model((inputs,), module)
    finite = torch.isfinite(inputs).all()  # read below, with the maps' check
    maps = per_pixel_map(
        attributions, batch, (height, width), channel_reduction=channel_reduction,
        device=inputs.device,
    )
    inputs_finite, any_nonzero = torch.stack((finite, maps.ne(0).any())).tolist()
    if not inputs_finite:
        raise ValueError("inputs[0] contains NaN or infinite values")
    if batch and not any_nonzero:
        every_map_zero_warning("this metric")
    return PreparedBatch(
        forward_func, inputs.detach(), maps, internal_batch_size, additional_forward_args
    )
