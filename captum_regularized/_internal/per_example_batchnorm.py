"""Train-mode BatchNorm computed from its parts, for per-example input gradients.

In train mode BatchNorm normalises with the batch's mean and variance, so the gradient
of the *sum* of the target scores with respect to example ``i`` also carries
``dS_j/dx_i`` for every other example ``j`` (through the statistics), a term as large
as the example's own gradient for small batches. Input-gradient methods that mean "the
gradient of example ``i``'s score" want that path cut; the training loss wants it kept.

:class:`TrainBatchNormCalls` is the one torch function mode that intercepts the
train-mode ``F.batch_norm`` calls of a forward pass (``nn.BatchNorm*``; eval-mode
calls and everything else run as they are); its users decide what such a call does:

* the guided rule (:mod:`~captum_regularized._internal.guided_relu`) computes it with
  :func:`batch_norm_with_switchable_statistics`, whose mean and variance carry a
  switchable "hold constant" hook;
* the guided regularizer's finite-difference mode records, holds or replaces the
  statistics (:func:`batch_moments`, :func:`normalised`).

Running statistics are not this module's business except where a call stands in for
``F.batch_norm`` (:func:`batch_norm_with_switchable_statistics` updates them exactly
once, as ``F.batch_norm`` does); keeping them is
:func:`~captum_regularized._internal.model_state.kept_batchnorm_statistics`.
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
    "Moments",
    "TrainBatchNormCalls",
    "batch_moments",
    "batch_norm_with_switchable_statistics",
    "normalised",
]

Moments = tuple[torch.Tensor, torch.Tensor]
"""Per-channel batch mean and (biased) variance."""

_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half precision (autocast) in float32, other dtypes as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def batch_moments(x: torch.Tensor) -> Moments:
    """Per-channel batch mean and biased variance of a ``(B, C, ...)`` tensor (float32 or wider).

    Examples
    --------
    >>> mean, var = batch_moments(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    >>> mean.tolist(), var.tolist()
    ([2.0, 0.0], [1.0, 0.0])
    """
    x = _wide(x)
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, correction=0)


def normalised(
    x: torch.Tensor,
    moments: Moments,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.batch_norm`` with the given statistics, differentiable in them; no running update.

    One per-channel affine map: autograd keeps only ``x`` (as the fused kernel does)
    instead of the centred and the normalised activations as well. The result has
    ``x``'s dtype.

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
    """Hands every train-mode ``F.batch_norm`` call to :meth:`train_batch_norm`.

    ``call`` is the bound argument dict of ``F.batch_norm`` (``input``,
    ``running_mean``, ``running_var``, ``weight``, ``bias``, ``training``,
    ``momentum``, ``eps``). Other functions go to :meth:`other_call` (by default run
    as they are). Subclasses override one or both; ``intercept_batch_norm = False``
    lets train-mode calls through too.

    Examples
    --------
    >>> class Count(TrainBatchNormCalls):
    ...     calls = 0
    ...     def train_batch_norm(self, call):
    ...         self.calls += 1
    ...         return super().train_batch_norm(call)
    >>> with Count() as count:
    ...     _ = torch.nn.BatchNorm1d(2).train()(torch.randn(4, 2))
    ...     _ = torch.nn.BatchNorm1d(2).eval()(torch.randn(4, 2))
    >>> count.calls
    1
    """

    intercept_batch_norm = True

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
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

    ``call`` holds ``F.batch_norm``'s arguments (see :class:`TrainBatchNormCalls`). The
    running statistics are updated exactly once, as ``F.batch_norm`` does.
    Half-precision inputs (autocast) are normalised in float32 and returned in their
    dtype.

    Raises
    ------
    ValueError
        With one value per channel (a batch of one through ``BatchNorm1d``), as
        ``F.batch_norm`` does in training: the batch variance would be 0 and the running
        variance dragged towards it. Raised before the running statistics move.

    Examples
    --------
    >>> x = torch.randn(8, 3, 4, 4)
    >>> call = {"input": x, "running_mean": torch.zeros(3), "running_var": torch.ones(3),
    ...         "weight": None, "bias": None, "momentum": 0.1, "eps": 1e-5}
    >>> seen = []
    >>> y = batch_norm_with_switchable_statistics(call, seen.append)
    >>> reference = F.batch_norm(x, None, None, training=True)
    >>> len(seen), torch.allclose(y, reference, atol=1e-5)
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
