"""What every perturbation metric does before its maths: check, prepare, forward in chunks.

Deletion/insertion, allegiance and confidence change all take ``(forward_func, inputs,
attributions)`` and score the model on perturbed copies of the batch. The preprocessing
they share is done once, by :func:`prepare_batch`: ``inputs`` must be a floating
``(B, C, H, W)`` batch on the model's device without NaN or infinity, and the
attributions become one value per pixel, ``(B, 1, H, W)``
(:func:`~captum_regularized._internal.pixel_maps.per_pixel_map`). An empty batch is
let through (each metric returns its own empty result) unless the metric refuses it.

The :class:`PreparedBatch` it returns runs the model the way all of them need: on
``K x B`` images built from the ``B`` examples, ``internal_batch_size`` of them per
forward pass, built on the inputs' device, with no gradient and in eval mode (the
model's modes are restored afterwards), keeping only a small reduction of every output.
Memory stays bounded and nothing is copied to the host inside the loop, so a metric
writes only how it perturbs the images and what it makes of the scores.
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
from captum_regularized._internal.pixel_maps import per_pixel_map
from captum_regularized._internal.targets import class_indices

__all__ = [
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "PreparedBatch",
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

    Parameters
    ----------
    forward_func : callable
        The model (or a function of the images and ``additional_forward_args``).
    count : int
        Number of images to evaluate, indexed ``0 .. count - 1``.
    build : callable
        ``build(index) -> (images, example_index)``: the images for a 1-D index
        tensor, and which of the ``batch`` examples each one comes from.
    reduce : callable
        ``reduce(output, example_index) -> values`` with ``values.shape[0] == len(index)``.
    batch : int
        Number of original examples (selects per-example additional arguments).
    device : torch.device
        Where the index tensors live (the inputs' device).
    internal_batch_size : int, optional
        Images per forward pass (default :data:`DEFAULT_INTERNAL_BATCH_SIZE`).
    additional_forward_args : Any
        Captum's extra forward arguments; tensors with ``batch`` rows are indexed
        like the images, everything else is passed as is.

    Returns
    -------
    Tensor
        The reductions of all ``count`` images, concatenated along dim 0.

    Raises
    ------
    TypeError
        When the model returns something other than one tensor, a Hugging Face
        ``ModelOutput`` or a dict with key ``"logits"`` (whose logits are used).
    ValueError
        When ``count`` is below 1 or ``internal_batch_size`` is not positive.

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
    """Rank of every pixel in decreasing map order, shape ``(B, H*W)``, 0 = highest.

    Ties keep raster order (a stable sort). With ``zeros_last`` pixels whose value is
    exactly 0 rank after every non-zero pixel, negative ones included.

    Examples
    --------
    >>> pixel_ranks(torch.tensor([[[[0.2, 0.9], [0.0, -0.5]]]])).tolist()
    [[1, 0, 2, 3]]
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
    """A reducer giving the probability (softmax of the output) of each example's class.

    Examples
    --------
    >>> reduce = class_probability(torch.tensor([1]))
    >>> reduce(torch.zeros(2, 2), torch.tensor([0, 0])).tolist()
    [0.5, 0.5]
    """

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
    """A checked batch of a perturbation metric and the way to run its model.

    Made by :func:`prepare_batch`; the methods evaluate the model as
    :func:`forward_in_chunks` does, with the metric's ``internal_batch_size`` and
    ``additional_forward_args``.

    Attributes
    ----------
    forward_func : callable
        The model.
    inputs : Tensor
        The images ``(B, C, H, W)``, detached.
    maps : Tensor
        One float value per pixel ``(B, 1, H, W)``, on the inputs' device.
    internal_batch_size : int or None
        Images per forward pass.
    additional_forward_args : Any
        Extra forward arguments.

    Examples
    --------
    >>> prepared = prepare_batch(lambda t: t.flatten(1), torch.ones(2, 3, 4, 4),
    ...                          torch.rand(2, 3, 4, 4))
    >>> prepared.size, prepared.maps.shape, prepared.clean_outputs().shape
    (2, torch.Size([2, 1, 4, 4]), torch.Size([2, 48]))
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
            self.forward_func,
            count,
            build,
            reduce,
            batch=self.size,
            device=self.inputs.device,
            internal_batch_size=self.internal_batch_size,
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
        """The reducer scoring each example's target class, and the clean scores ``(B,)``.

        ``target`` takes every Captum form; ``None`` means the class predicted on the
        clean image. A target callable stands for its integer ``category`` attribute
        (pytorch-grad-cam's ``ClassifierOutputTarget(k)`` for class ``k``); one without
        it is a ``TypeError``.
        """
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
        """Scores of the images "top-ranked pixels from ``top``, the others from ``rest``".

        Pixels are ranked by :func:`pixel_ranks` of :attr:`maps`. For step ``k`` and
        example ``b`` the image takes its ``counts[k, b]`` highest-ranked pixels (all
        channels) from ``top[b]`` and every other pixel from ``rest[b]``: deletion puts
        the substrate in ``top``, insertion puts the image there.

        Parameters
        ----------
        counts : Tensor
            ``(K, B)`` integers, pixels taken from ``top`` at every step.
        top, rest : Tensor
            ``(B, C, H, W)``.
        reduce : callable
            ``reduce(output, example_index)`` as in :func:`forward_in_chunks`.
        zeros_last : bool
            Rank pixels whose value is exactly 0 after all the others.

        Returns
        -------
        Tensor
            ``(K, B, ...)``: the reduction of every image.

        Examples
        --------
        >>> x = torch.ones(1, 1, 2, 2)
        >>> prepared = prepare_batch(lambda t: t.flatten(1).sum(1, keepdim=True), x,
        ...                          torch.tensor([[4.0, 3.0], [2.0, 1.0]]))
        >>> scores = prepared.ranked_scores(torch.tensor([[0], [1], [4]]), torch.zeros_like(x),
        ...                                 x, lambda out, i: out[:, 0])
        >>> scores[:, 0].tolist()
        [4.0, 3.0, 0.0]
        """
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

    Parameters
    ----------
    forward_func : callable
        The model; its device is the one ``inputs`` must be on.
    inputs : Tensor
        Images ``(B, C, H, W)``, floating point and finite.
    attributions : Tensor
        Any form :func:`~captum_regularized._internal.pixel_maps.per_pixel_map` takes.
    channel_reduction : {"max", "sum", "mean"}
        How channels of an input-shaped map are collapsed.
    internal_batch_size : int, optional
        Images per forward pass (checked when the model first runs).
    additional_forward_args : Any
        Extra forward arguments.
    refuse_empty : str, optional
        The metric's name when it has no value for an empty batch: ``B == 0`` is then
        a ``ValueError`` naming it. By default an empty batch is let through.

    Returns
    -------
    PreparedBatch

    Raises
    ------
    TypeError
        When ``inputs`` is not a floating-point tensor, or not of the dtype of the
        model's parameters.
    ValueError
        When ``inputs`` is not ``(B, C, H, W)`` (a ``(B, H, W, C)`` batch is named as
        such), is empty and ``refuse_empty`` is given, lives on another device than the
        model or holds NaN or infinity; or for maps
        :func:`~captum_regularized._internal.pixel_maps.per_pixel_map` refuses.

    Warns
    -----
    UserWarning
        When every map of the batch is zero (nothing to rank). The check shares the
        host synchronisation of the inputs' finiteness check: it costs no extra one.

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
        attributions,
        batch,
        (height, width),
        channel_reduction=channel_reduction,
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
