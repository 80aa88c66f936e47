"""Train-mode BatchNorm whose batch statistics can be held constant for one backward pass.

In train mode BatchNorm normalises with the batch's mean and variance, so the gradient
of the *sum* of the target scores with respect to example ``i`` also carries
``dS_j/dx_i`` for every other example ``j`` (through the statistics), a term as large
as the example's own gradient for small batches. Input-gradient methods that mean "the
gradient of example ``i``'s score" want that path cut; the training loss wants it kept.

:func:`batch_norm_with_switchable_statistics` computes train-mode batch norm from its
parts and hands the mean and variance to ``on_statistics`` (which puts a switchable
tensor hook on them that zeroes their gradient while switched on). The running
statistics are updated exactly once, as ``F.batch_norm`` does, and a batch with one
value per channel is refused with ``F.batch_norm``'s own ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["batch_norm_with_switchable_statistics"]


def batch_norm_with_switchable_statistics(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    on_statistics: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """Train-mode ``F.batch_norm`` from its parts; ``on_statistics`` sees mean and variance.

    Half-precision inputs (autocast) are normalised in float32 and returned in their dtype.

    Raises
    ------
    ValueError
        With one value per channel (a batch of one through ``BatchNorm1d``), as
        ``F.batch_norm`` does in training: the batch variance would be 0 and the running
        variance dragged towards it. Raised before the running statistics move.

    Examples
    --------
    >>> x = torch.randn(8, 3, 4, 4)
    >>> mean, var = torch.zeros(3), torch.ones(3)
    >>> seen = []
    >>> y = batch_norm_with_switchable_statistics(x, mean, var, None, None, 0.1, 1e-5,
    ...                                           seen.append)
    >>> reference = torch.nn.functional.batch_norm(x, None, None, training=True)
    >>> len(seen), torch.allclose(y, reference, atol=1e-5)
    (2, True)
    """
    dims = [0, *range(2, input.dim())]
    shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    count = input.shape[0] * math.prod(input.shape[2:])
    if count == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}"
        )
    x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
    mean = x.mean(dims)
    var = x.var(dims, correction=0)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = var.detach() * (count / max(count - 1, 1))
            running_mean.copy_(momentum * mean.detach() + (1 - momentum) * running_mean)
            running_var.copy_(momentum * unbiased + (1 - momentum) * running_var)
    on_statistics(mean)
    on_statistics(var)
    # One per-channel affine map: autograd keeps only ``x`` (as the fused kernel does)
    # instead of the centred and the normalised activations as well.
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return (x * scale.view(shape) + shift.view(shape)).to(input.dtype)
