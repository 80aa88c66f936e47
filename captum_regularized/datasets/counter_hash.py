"""Counter-based random numbers: every value is a 32-bit hash of (seed, item, stream, counter).

Exact ``int64`` ops make the synthetic data the same bytes on every device
(:doc:`/design_notes/data_and_study`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

import torch

HashInput = TypeVar("HashInput", int, torch.Tensor)

MASK32 = 0xFFFFFFFF
_MULTIPLIER_A = 0x7FEB352D  # both odd and below 2**31: (2**32 - 1) * m < 2**63
_MULTIPLIER_B = 0x5BD1E995
_UNIT_24 = 2.0**-24


class Stream(IntEnum):
    """The independent random streams of the synthetic data."""

    LABELS = 0
    TARGET = 1
    DISTRACTORS = 2
    COLOURS = 3
    BACKGROUND = 4
    TEXTURE_COARSE = 5
    TEXTURE_FINE = 6
    NOISE = 7
    CLUTTER_RED = 8
    CLUTTER_GREEN = 9
    CLUTTER_BLUE = 10


def mix32(x: HashInput) -> HashInput:
    """Bijective 32-bit xor-shift-multiply finaliser of ints (or elementwise of ``int64``
    tensors) in ``[0, 2**32)``.

    Examples
    --------
    >>> mix32(torch.tensor([0, 1, 2])).tolist(), mix32(1)
    ([0, 4293290225, 4291678691], 4293290225)
    """
    x = x ^ (x >> 16)
    x = (x * _MULTIPLIER_A) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MULTIPLIER_B) & MASK32
    return x ^ (x >> 16)


def fold_seed(seed: int) -> int:
    """Reduce a non-negative int of any size to a well-mixed 32-bit key."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    key = mix32(0x9E3779B9)
    while True:
        key = mix32(key ^ (seed & MASK32))
        seed >>= 32
        if seed == 0:
            return key


def stream_constant(stream: int, counter: int = 0) -> int:
    """A 32-bit constant naming one random stream and one position in it."""
    return mix32(mix32((stream * 0x632BE5AB + 0x3C6EF372) & MASK32) ^ counter)


def item_keys(seed_key: int, indices: torch.Tensor) -> torch.Tensor:
    """Per-item 32-bit keys from a folded seed and ``int64`` item indices."""
    return mix32(mix32(indices ^ seed_key) ^ mix32(seed_key ^ 0x85EBCA6B))


def hashed_bits(keys: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """``count`` independent 32-bit hashes per key: shape ``keys.shape + (count,)``."""
    constants = torch.tensor(
        [stream_constant(stream, j) for j in range(count)], dtype=torch.int64, device=keys.device
    )
    return mix32(keys.unsqueeze(-1) ^ constants)


def bits_to_unit(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes to exact ``float32`` uniforms in ``[0, 1)`` (the top 24 bits).

    Examples
    --------
    >>> bits_to_unit(torch.tensor([0, 2**32 - 1])).tolist()
    [0.0, 0.9999999403953552]
    """
    return (bits >> 8).to(torch.float32) * _UNIT_24
