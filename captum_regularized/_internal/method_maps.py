"""An attribution method's maps of a batch, whatever form the method takes.

:func:`~captum_regularized.metrics.evaluate_dataset` and Lightning's
:class:`~captum_regularized.integrations.lightning.ExplanationCallback` both explain
batches with a method their user names: a Captum attribution object (anything with an
``attribute`` method), a plain callable ``method(inputs, targets, **kwargs)``, or
``None`` when no metric needs maps. :func:`method_maps` is the one place that calls it.
"""

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
    """The method's detached maps of ``inputs`` for ``targets`` (``None`` for no method).

    ``method.attribute(inputs, target=targets, **kwargs)`` when the method has an
    ``attribute`` method, else ``method(inputs, targets, **kwargs)``; ``inputs`` is
    detached and requires grad first, as gradient methods expect.

    Raises
    ------
    TypeError
        For a method of neither form, or one that does not return one tensor.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> model = torch.nn.Linear(4, 2)
    >>> method_maps(Saliency(model), torch.rand(3, 4), torch.tensor([0, 1, 0]), {}).shape
    torch.Size([3, 4])
    >>> method_maps(lambda x, t: x * 0, torch.rand(3, 4), torch.tensor([0, 1, 0]), {}).sum()
    tensor(0.)
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
