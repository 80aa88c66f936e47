"""What every perturbation metric does before its maths: check, prepare, forward in chunks.

:func:`prepare_batch` checks ``(forward_func, inputs, attributions)`` and makes one map
value per pixel; the :class:`PreparedBatch` it returns runs the model on ``K x B``
images built from the ``B`` examples, ``internal_batch_size`` per forward pass, on the
inputs' device, without gradients and in eval mode. A metric writes only how it
perturbs the images and what it makes of the scores
(:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from captum_regularized._internal.batch_args import is_per_example
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
    "class_probability",
    "forward_in_chunks",
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
    """Raise unless ``inputs`` is a 4-D floating tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() != 4:
        hint = (
            "; for one (C, H, W) image, add its batch dimension: inputs.unsqueeze(0)"
            if inputs.dim() == 3
            else ""
        )
        raise ValueError(
            "inputs must be an image batch of shape (batch, channels, height, width), "
            f"got shape {tuple(inputs.shape)}{hint}"
        )
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")


def forward_in_chunks(
    forward_func: Callable[..., Any],
    count: int,
    build: Builder,
    reduce: Reducer,
    *,
    batch: int,
    device: torch.device,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
) -> torch.Tensor:
    """Evaluate ``count`` built images, ``internal_batch_size`` per forward pass.

    ``build(index) -> (images, example_index)`` makes the images of a 1-D index tensor
    (on ``device``) and says which of the ``batch`` examples each comes from (their
    per-example ``additional_forward_args`` follow); ``reduce(output, example_index)``
    keeps one value per image. Returns the reductions of all ``count`` images.

    Examples
    --------
    >>> x = torch.arange(3.0)[:, None]
    >>> forward_in_chunks(lambda t: 2 * t, 3, lambda i: (x[i], i), lambda out, i: out[:, 0],
    ...                   batch=3, device=x.device, internal_batch_size=2).tolist()
    [0.0, 2.0, 4.0]
    """
    chunk = _chunk_size(internal_batch_size)
    args = format_additional_args(additional_forward_args)
    pieces: list[torch.Tensor] = []
    with preserved_model(find_module(forward_func), eval_mode=True), torch.no_grad():
        for start in range(0, count, chunk):
            index = torch.arange(start, min(start + chunk, count), device=device)
            images, example_index = build(index)
            selected = None if args is None else tuple(
                arg[example_index] if is_per_example(arg, batch) else arg for arg in args
            )
            output = run_forward(forward_func, (images,), selected)
            pieces.append(reduce(output, example_index))
    if not pieces:
        raise ValueError("forward_in_chunks needs at least one image to evaluate (count >= 1)")
    return torch.cat(pieces)


def pixel_ranks(maps: torch.Tensor, *, zeros_last: bool = False) -> torch.Tensor:
    """Rank of every pixel in decreasing map order, ``(B, H*W)``, 0 = highest.

    Ties keep raster order; with ``zeros_last`` exact zeros rank after every other pixel.

    Examples
    --------
    >>> pixel_ranks(torch.tensor([[[[0.2, 0.9], [0.0, -0.5]]]]), zeros_last=True).tolist()
    [[1, 0, 3, 2]]
    """
    flat = maps.reshape(maps.shape[0], -1)
    if zeros_last:
        flat = torch.where(flat == 0, torch.full_like(flat, float("-inf")), flat)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def class_probability(classes: torch.Tensor, *, apply_softmax: bool = True) -> Reducer:
    """A reducer giving the probability (softmax of the output) of each example's class."""

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

    return reduce


@dataclass(frozen=True)
class PreparedBatch:
    """A checked batch of a perturbation metric (:func:`prepare_batch`) and its model.

    ``inputs`` are the detached images ``(B, C, H, W)``, ``maps`` one float value per
    pixel ``(B, 1, H, W)``; the methods run the model as :func:`forward_in_chunks`.
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
        """:func:`forward_in_chunks` of ``count`` images built from this batch."""
        return forward_in_chunks(
            self.forward_func, count, build, reduce, batch=self.size,
            device=self.inputs.device, internal_batch_size=self.internal_batch_size,
            additional_forward_args=self.additional_forward_args,
        )

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
        reduce = class_probability(class_indices(outputs, target), apply_softmax=apply_softmax)
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
        """Scores ``(K, B, ...)`` of the images "top-ranked pixels from ``top``, the rest
        from ``rest``": at step ``k`` example ``b`` takes its ``counts[k, b]`` pixels
        ranked highest by :func:`pixel_ranks` of :attr:`maps` (all channels) from
        ``top[b]``. Deletion puts the substrate in ``top``, insertion the image."""
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

    ``inputs`` must be a finite floating ``(B, C, H, W)`` batch on the model's device and
    of its dtype; ``attributions`` any form
    :func:`~captum_regularized._internal.pixel_maps.per_pixel_map` takes. With
    ``refuse_empty`` (the metric's name) an empty batch is a ``ValueError``. A batch
    whose maps are all zero gets a ``UserWarning``.

    Examples
    --------
    >>> prepare_batch(lambda t: t, torch.ones(2, 3, 4, 4), torch.rand(1, 2, 2)).maps.shape
    torch.Size([2, 1, 4, 4])
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
