"""Forward many perturbed copies of a batch in bounded chunks, reduced on the fly.

Perturbation metrics (deletion/insertion, allegiance, confidence change) evaluate the
model on ``K x B`` images built from ``B`` examples. :func:`forward_in_chunks` builds
``internal_batch_size`` of them at a time on the inputs' device, runs the model with
no gradient in eval mode (the model's modes are restored afterwards) and keeps only a
small reduction of every output, so memory stays bounded and nothing is copied to the
host inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import format_additional_args, run_forward
from captum_regularized._internal.checks import not_a_class_score_tensor
from captum_regularized._internal.model_state import find_module, preserved_model

__all__ = [
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "check_internal_batch_size",
    "forward_in_chunks",
    "pixel_ranks",
    "ranked_perturbation_scores",
]

DEFAULT_INTERNAL_BATCH_SIZE = 128
"""Images per forward pass when a metric is called with ``internal_batch_size=None``."""

Builder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_internal_batch_size(internal_batch_size: int | None) -> int:
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


def _select_examples(args: tuple[Any, ...] | None, index: torch.Tensor, batch: int) -> Any:
    """Pick the rows ``index`` of every per-example tensor argument (dim 0 == batch)."""
    if args is None:
        return None
    return tuple(
        arg[index] if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == batch
        else arg
        for arg in args
    )


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
        When the model returns something other than one tensor (a tuple or dict).
    ValueError
        When ``count`` is below 1 or ``internal_batch_size`` is not positive.

    Examples
    --------
    >>> x = torch.arange(3.0)[:, None]
    >>> forward_in_chunks(lambda t: 2 * t, 3, lambda i: (x[i], i), lambda out, i: out[:, 0],
    ...                   batch=3, device=x.device, internal_batch_size=2).tolist()
    [0.0, 2.0, 4.0]
    """
    chunk = check_internal_batch_size(internal_batch_size)
    args = format_additional_args(additional_forward_args)
    pieces: list[torch.Tensor] = []
    with preserved_model(find_module(forward_func), eval_mode=True), torch.no_grad():
        for start in range(0, count, chunk):
            index = torch.arange(start, min(start + chunk, count), device=device)
            images, example_index = build(index)
            output = run_forward(
                forward_func, (images,), _select_examples(args, example_index, batch)
            )
            if not isinstance(output, torch.Tensor):
                raise not_a_class_score_tensor(output, "the model (forward_func)")
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


def ranked_perturbation_scores(
    forward_func: Callable[..., Any],
    ranks: torch.Tensor,
    counts: torch.Tensor,
    top: torch.Tensor,
    rest: torch.Tensor,
    reduce: Reducer,
    *,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
) -> torch.Tensor:
    """Scores of the images "top-ranked pixels from ``top``, the others from ``rest``".

    For step ``k`` and example ``b`` the image takes its ``counts[k, b]`` highest-ranked
    pixels (all channels) from ``top[b]`` and every other pixel from ``rest[b]``:
    deletion puts the substrate in ``top``, insertion puts the image there.

    Parameters
    ----------
    ranks : Tensor
        ``(B, H*W)`` from :func:`pixel_ranks`.
    counts : Tensor
        ``(K, B)`` integers, pixels taken from ``top`` at every step.
    top, rest : Tensor
        ``(B, C, H, W)``.
    reduce : callable
        ``reduce(output, example_index)`` as in :func:`forward_in_chunks`.

    Returns
    -------
    Tensor
        ``(K, B, ...)``: the reduction of every image.

    Examples
    --------
    >>> x = torch.ones(1, 1, 2, 2)
    >>> ranks = pixel_ranks(torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]]))
    >>> counts = torch.tensor([[0], [1], [4]])
    >>> scores = ranked_perturbation_scores(lambda t: t.flatten(1).sum(1, keepdim=True), ranks,
    ...     counts, torch.zeros_like(x), x, lambda out, i: out[:, 0])
    >>> scores[:, 0].tolist()
    [4.0, 3.0, 0.0]
    """
    steps, batch = counts.shape
    height, width = top.shape[2:]

    def build(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step, example = index // batch, index % batch
        taken = ranks[example] < counts[step, example][:, None]
        taken = taken.view(-1, 1, height, width)
        return torch.where(taken, top[example], rest[example]), example

    values = forward_in_chunks(
        forward_func,
        steps * batch,
        build,
        reduce,
        batch=batch,
        device=top.device,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )
    return values.view(steps, batch, *values.shape[1:])


def clean_outputs(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    *,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
) -> torch.Tensor:
    """The model's outputs on the unperturbed batch (no gradient, eval mode).

    Examples
    --------
    >>> clean_outputs(lambda t: t * 3, torch.ones(2, 1)).tolist()
    [[3.0], [3.0]]
    """
    return forward_in_chunks(
        forward_func,
        inputs.shape[0],
        lambda index: (inputs[index], index),
        lambda output, index: output,
        batch=inputs.shape[0],
        device=inputs.device,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )


def class_probability(
    classes: torch.Tensor, *, apply_softmax: bool = True
) -> Reducer:
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
