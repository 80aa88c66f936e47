"""Per-pixel sensor noise from counter-based hashes (bounded, zero-mean, bit-exact)."""

from __future__ import annotations

import torch

from captum_regularized.datasets.counter_hash import Stream, hashed_bits, mix32

_STD_UNITS = 13.057564857200053  # std of a + b - 31 for a, b uniform on {0, ..., 31}


def triangular_noise(keys: torch.Tensor, num_pixels: int, std: float) -> torch.Tensor:
    """Zero-mean noise ``(B, 3, num_pixels)`` per item key: two 5-bit uniforms summed,
    scaled to standard deviation ``std`` (bounded by ``2.38 * std``).
    """
    pixels = torch.arange(num_pixels, device=keys.device, dtype=torch.int64)
    noise_keys = hashed_bits(keys, Stream.NOISE, 1)  # (B, 1)
    bits = mix32(noise_keys ^ pixels[None, :])  # (B, P), 32 bits each
    # the low 30 bits fit int32 exactly; int32 shifts and masks are much faster
    shifts = torch.tensor([0, 10, 20], dtype=torch.int32, device=keys.device)[None, :, None]
    fields = (bits & 0x3FFFFFFF).to(torch.int32)[:, None, :] >> shifts
    values = (fields & 31) + ((fields >> 5) & 31) - 31
    return values.to(torch.float32) * (std / _STD_UNITS)
