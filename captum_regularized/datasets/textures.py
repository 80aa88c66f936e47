"""Procedural backgrounds (value noise on hashed lattices) and per-pixel sensor noise."""

from __future__ import annotations

import torch

from captum_regularized.datasets.counter_hash import Stream, bits_to_unit, hashed_bits, mix32

_STD_UNITS = 13.057564857200053  # std of a + b - 31 for a, b uniform on {0, ..., 31}


def _lattice_weights(
    size: int, cells: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower lattice index and smoothstep weight of every pixel centre along one axis."""
    position = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (cells / size)
    lower = position.floor().clamp(max=cells - 1)
    frac = position - lower
    weight = frac * frac * (3.0 - frac * 2.0)
    return lower.long(), weight


def value_noise(keys: torch.Tensor, size: int, cells: int, stream: int) -> torch.Tensor:
    """One smooth field ``(B, size, size)`` in ``[-1, 1]`` per key: hashed values on a
    ``cells x cells`` lattice, interpolated with a smoothstep.
    """
    if cells < 1 or size < 1:
        raise ValueError(f"size and cells must be >= 1, got {size}, {cells}")
    lattice = bits_to_unit(hashed_bits(keys, stream, (cells + 1) ** 2)) * 2.0 - 1.0
    lattice = lattice.view(-1, cells + 1, cells + 1)
    lower, weight = _lattice_weights(size, cells, keys.device)
    upper = lower + 1
    # x first on the small lattice, then y by copying whole rows (cheap on every device)
    rows = lattice.index_select(2, lower) * (1.0 - weight) + lattice.index_select(2, upper) * weight
    low_part = rows.index_select(1, lower) * (1.0 - weight)[:, None]
    return low_part + rows.index_select(1, upper) * weight[:, None]


CLUTTER_CELLS = 6  # blobs about the size of an object


def textured_background(keys: torch.Tensor, size: int, clutter: float = 0.0) -> torch.Tensor:
    """Cloudy backgrounds ``(B, 3, size, size)``: a random grey and tint plus two octaves
    of value noise, and ``clutter`` times one value-noise field per colour channel.

    Examples
    --------
    >>> from captum_regularized.datasets.counter_hash import fold_seed, item_keys
    >>> background = textured_background(item_keys(fold_seed(0), torch.arange(2)), 32)
    >>> background.shape, bool((background > 0).all() and (background < 1).all())
    (torch.Size([2, 3, 32, 32]), True)
    """
    u = bits_to_unit(hashed_bits(keys, Stream.BACKGROUND, 7))
    grey = u[:, :1] * 0.35 + 0.3
    base = grey + (u[:, 1:4] * 2.0 - 1.0) * 0.06
    amplitude = (u[:, 4:7] * 0.5 + 0.75) * 0.2
    coarse = value_noise(keys, size, 4, Stream.TEXTURE_COARSE)
    fine = value_noise(keys, size, 8, Stream.TEXTURE_FINE)
    texture = coarse * 0.65 + fine * 0.35
    background = base[:, :, None, None] + amplitude[:, :, None, None] * texture[:, None]
    if clutter > 0:
        streams = (Stream.CLUTTER_RED, Stream.CLUTTER_GREEN, Stream.CLUTTER_BLUE)
        colour = torch.stack([value_noise(keys, size, CLUTTER_CELLS, s) for s in streams], 1)
        background = background + clutter * colour
    return background


def triangular_noise(keys: torch.Tensor, num_pixels: int, std: float) -> torch.Tensor:
    """Zero-mean noise ``(B, 3, num_pixels)`` per item key: two 5-bit uniforms summed,
    scaled to standard deviation ``std`` (bounded by ``2.38 * std``).
    """
    pixels = torch.arange(num_pixels, device=keys.device, dtype=torch.int64)
    noise_keys = hashed_bits(keys, Stream.NOISE, 1)  # (B, 1)
    bits = mix32(noise_keys ^ pixels[None, :])  # (B, P), 32 bits each
    shifts = torch.tensor([0, 10, 20], dtype=torch.int32, device=keys.device)[None, :, None]
    fields = (bits & 0x3FFFFFFF).to(torch.int32)[:, None, :] >> shifts
    values = (fields & 31) + ((fields >> 5) & 31) - 31
    return values.to(torch.float32) * (std / _STD_UNITS)
