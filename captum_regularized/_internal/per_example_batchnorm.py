"""Train-mode BatchNorm computed from its parts, for per-example input gradients.

In train mode the gradient of the summed scores with respect to example ``i`` also
carries ``dS_j/dx_i`` through the batch statistics. :class:`TrainBatchNormCalls` is the
one torch function mode that intercepts train-mode ``F.batch_norm`` calls; its users
(the guided rule, the guided regularizer's finite differences) decide what they compute.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "Moments", "TrainBatchNormCalls", "batch_moments", "batch_norm_with_switchable_statistics",
    "normalised",
]

Moments = tuple[torch.Tensor, torch.Tensor]
"""Per-channel batch mean and (biased) variance."""

_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half precision (autocast) in float32, other dtypes as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def batch_moments(x: torch.Tensor) -> Moments:
    """Per-channel batch mean and biased variance of a ``(B, C, ...)`` tensor (float32 or wider)."""
    x = _wide(x)
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, correction=0)


def normalised(
    x: torch.Tensor, moments: Moments, eps: float,
    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.batch_norm`` with the given statistics, differentiable in them; no running update.

    One per-channel affine map, so autograd keeps only ``x``; the result has ``x``'s dtype.

    Examples
    --------
    >>> x = torch.randn(8, 3, 4, 4)
    >>> reference = F.batch_norm(x, None, None, training=True)
    >>> torch.allclose(normalised(x, batch_moments(x), 1e-5), reference, atol=1e-5)
    True
    """
    mean, var = moments
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return (_wide(x) * scale.view(shape) + shift.view(shape)).to(x.dtype)


class TrainBatchNormCalls(TorchFunctionMode):
    """Hands every train-mode ``F.batch_norm`` call (its bound arguments) to
    :meth:`train_batch_norm`, every other call to :meth:`other_call`.

    ``intercept_batch_norm = False`` lets train-mode calls through too.

    Examples
    --------
    >>> class Count(TrainBatchNormCalls):
    ...     def train_batch_norm(self, call):
    ...         print("train-mode call")
    >>> with Count():
    ...     _ = torch.nn.BatchNorm1d(2).train()(torch.randn(4, 2))
    ...     _ = torch.nn.BatchNorm1d(2).eval()(torch.randn(4, 2))
    train-mode call
    """

    intercept_batch_norm = True

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm and self.intercept_batch_norm:
            bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments["training"]:
                return self.train_batch_norm(bound.arguments)
        return self.other_call(func, args, kwargs)

    def train_batch_norm(self, call: dict[str, Any]) -> torch.Tensor:
        """What a train-mode ``F.batch_norm`` call computes (here: itself)."""
        return F.batch_norm(**call)

    def other_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """What any other call computes (here: itself)."""
        return func(*args, **kwargs)


def batch_norm_with_switchable_statistics(
    call: dict[str, Any], on_statistics: Callable[[torch.Tensor], None]
) -> torch.Tensor:
    """Train-mode ``F.batch_norm`` from its parts; ``on_statistics`` sees mean and variance.

    The running statistics move once, as in ``F.batch_norm``; half precision is
    normalised in float32. One value per channel is a ``ValueError``, as in PyTorch.

    Examples
    --------
    >>> x, seen = torch.randn(8, 3, 4, 4), []
    >>> call = dict(input=x, running_mean=None, running_var=None, weight=None, bias=None, eps=1e-5)
    >>> y = batch_norm_with_switchable_statistics(call, seen.append)
    >>> len(seen), torch.allclose(y, F.batch_norm(x, None, None, training=True), atol=1e-5)
    (2, True)
    """
    x, running_mean, running_var = call["input"], call["running_mean"], call["running_var"]
    count = x.shape[0] * math.prod(x.shape[2:])
    if count == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}"
        )
    wide = _wide(x)  # one float32 copy for the statistics and the map
    mean, var = batch_moments(wide)
    if running_mean is not None and running_var is not None:
        momentum = call["momentum"]
        with torch.no_grad():
            unbiased = var.detach() * (count / max(count - 1, 1))
            running_mean.copy_(momentum * mean.detach() + (1 - momentum) * running_mean)
            running_var.copy_(momentum * unbiased + (1 - momentum) * running_var)
    on_statistics(mean)
    on_statistics(var)
    return normalised(wide, (mean, var), call["eps"], call["weight"], call["bias"]).to(x.dtype)
