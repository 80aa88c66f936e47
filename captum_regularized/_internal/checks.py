"""Input checks shared by every public entry point: clear errors, never silent garbage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from captum_regularized._internal.model_state import model_device


def check_autograd_available(who: str) -> None:
    """Raise ``RuntimeError`` naming inference mode when gradients cannot be taken.

    Every entry point that differentiates the model calls this first, so that a caller
    inside ``torch.inference_mode()`` (Lightning's validation loop, for instance) reads
    what is wrong instead of autograd's "does not require grad".

    Examples
    --------
    >>> check_autograd_available("PositiveSaliency")
    >>> with torch.inference_mode():
    ...     check_autograd_available("PositiveSaliency")
    Traceback (most recent call last):
    ...
    RuntimeError: PositiveSaliency needs autograd and cannot run inside torch.inference_mode(); \
call it outside the block or under torch.inference_mode(False)
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} needs autograd and cannot run inside torch.inference_mode(); "
            "call it outside the block or under torch.inference_mode(False)"
        )


def check_floating(inputs: Sequence[torch.Tensor], name: str = "inputs") -> None:
    """Raise ``TypeError`` unless every tensor has a floating dtype.

    Examples
    --------
    >>> check_floating((torch.zeros(1),))
    >>> check_floating((torch.zeros(1, dtype=torch.long),))
    Traceback (most recent call last):
    ...
    TypeError: inputs[0] must be a floating-point tensor (gradients need one), got torch.int64
    """
    for index, tensor in enumerate(inputs):
        if not tensor.is_floating_point():
            raise TypeError(
                f"{name}[{index}] must be a floating-point tensor (gradients need one), "
                f"got {tensor.dtype}"
            )


def check_finite(inputs: Sequence[torch.Tensor], name: str = "inputs") -> None:
    """Raise ``ValueError`` when any tensor holds NaN or infinity (one check per call)."""
    for index, tensor in enumerate(inputs):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}[{index}] contains NaN or infinite values")


def check_batch_sizes(inputs: Sequence[torch.Tensor], name: str = "inputs") -> int:
    """Return the shared batch size; raise ``ValueError`` when the tensors disagree."""
    if any(t.dim() == 0 for t in inputs):
        raise ValueError(f"{name} must have a batch dimension (dim 0); got a 0-d tensor")
    sizes = {int(t.shape[0]) for t in inputs}
    if len(sizes) != 1:
        raise ValueError(f"{name} must share one batch size in dim 0, got {sorted(sizes)}")
    return sizes.pop()


def check_same_device(
    inputs: Sequence[torch.Tensor], model: nn.Module | None, name: str = "inputs"
) -> None:
    """Raise ``ValueError`` when an input lives on another device than the model."""
    device = model_device(model)
    for index, tensor in enumerate(inputs):
        if device is not None and tensor.device != device:
            raise ValueError(
                f"{name}[{index}] is on {tensor.device} but the model is on {device}; "
                "move them to the same device"
            )


def check_attribution_inputs(
    inputs: Sequence[torch.Tensor], model: nn.Module | None, name: str = "inputs"
) -> int:
    """All the checks above, in order; returns the batch size."""
    check_floating(inputs, name)
    batch = check_batch_sizes(inputs, name)
    check_same_device(inputs, model, name)
    check_finite(inputs, name)
    return batch


def not_a_class_score_tensor(output: Any, who: str) -> TypeError:
    """The ``TypeError`` for a model that returned something else than one tensor."""
    kind = type(output).__name__
    hint = ""
    if isinstance(output, (tuple, list, dict)):
        hint = "; wrap the model so that it returns the logits alone (e.g. lambda x: model(x)[0])"
    return TypeError(f"{who} must return one (batch, classes) tensor of class scores, got a "
                     f"{kind}{hint}")


def check_class_scores(
    output: Any, *, batch: int | None = None, who: str = "the model"
) -> torch.Tensor:
    """Return ``output`` if it is a ``(batch, classes)`` tensor, else a clear error.

    Parameters
    ----------
    output : Any
        What the model returned.
    batch : int, optional
        The number of inputs, checked against ``output.shape[0]``.
    who : str
        Named in the message (``"the model"``, ``"model"``, ...).

    Raises
    ------
    TypeError
        When ``output`` is not a tensor (a tuple or dict of outputs, say).
    ValueError
        When it is not two-dimensional, or has another batch size than the inputs.

    Examples
    --------
    >>> check_class_scores(torch.zeros(2, 3), batch=2).shape
    torch.Size([2, 3])
    >>> try:
    ...     check_class_scores({"logits": torch.zeros(2, 3)})
    ... except TypeError as error:
    ...     print(str(error).split(";")[0])
    the model must return one (batch, classes) tensor of class scores, got a dict
    """
    if not isinstance(output, torch.Tensor):
        raise not_a_class_score_tensor(output, who)
    if output.dim() != 2 or (batch is not None and output.shape[0] != batch):
        rows = "" if batch is None else f" with batch = {batch} rows"
        raise ValueError(
            f"{who} must return a (batch, classes) tensor of class scores{rows}, got shape "
            f"{tuple(output.shape)}"
        )
    return output


def check_data_batch(images: torch.Tensor, index: int, who: str, *, floating: bool = True) -> None:
    """Refuse a data-loader batch of images that holds NaN or inf (or is not floating).

    One check per batch, before the model sees it: a non-finite image would otherwise
    turn BatchNorm statistics, scores or weights into NaN without a word.

    Examples
    --------
    >>> check_data_batch(torch.zeros(2, 3), 0, "evaluate_accuracy")
    >>> check_data_batch(torch.tensor([[float("nan")]]), 4, "evaluate_accuracy")
    Traceback (most recent call last):
    ...
    ValueError: evaluate_accuracy: the images of data batch 4 contain NaN or infinite values
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who}: data batch {index} images must be a tensor, got "
                        f"{type(images).__name__}")
    if not images.is_floating_point():
        if floating:
            raise TypeError(f"{who}: the images of data batch {index} must be a floating-point "
                            f"tensor (gradients need one), got {images.dtype}")
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{who}: the images of data batch {index} contain NaN or infinite values")
