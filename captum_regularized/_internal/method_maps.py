"""An attribution method's maps of a batch, whatever form the user's method takes
(for :func:`~captum_regularized.metrics.evaluate_dataset` and the Lightning callback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.input_gradients import fresh_leaf

__all__ = ["Method", "method_maps"]

Method = Any | Callable[..., torch.Tensor] | None
"""A Captum attribution object, a callable ``method(inputs, targets, **kwargs)`` or ``None``."""


def method_maps(
    method: Method, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, Any]
) -> torch.Tensor | None:
    """The method's detached maps of ``inputs`` (as a fresh leaf) for ``targets``.

    ``method.attribute(inputs, target=targets, **kwargs)``, or ``method(inputs, targets,
    **kwargs)`` for a plain callable; ``None`` for no method. ``TypeError`` for a method
    of neither form, or one that does not return one tensor.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> method_maps(Saliency(torch.nn.Linear(4, 2)), torch.rand(3, 4), torch.tensor(0), {}).shape
    torch.Size([3, 4])
    """
    if method is None:
        return None
    inputs = fresh_leaf(inputs)
    if hasattr(method, "attribute"):
        maps = method.attribute(inputs, target=targets, **kwargs)
    elif callable(method):
        maps = method(inputs, targets, **kwargs)
    else:
        raise TypeError(
            "method must be a Captum attribution object, a callable "
            f"method(inputs, targets) or None, got {type(method).__name__}"
        )
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"the method must return one tensor of maps, got {type(maps).__name__}")
    return maps.detach()
