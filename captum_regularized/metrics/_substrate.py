"""What replaces removed pixels in deletion/insertion: zeros, a constant or a blur."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Substrate", "gaussian_blur", "make_substrate"]

Substrate = str | float | torch.Tensor


def gaussian_blur(
    images: torch.Tensor, *, kernel_size: int = 11, sigma: float = 5.0
) -> torch.Tensor:
    """Blur every channel with a separable Gaussian; edges are replicated.

    The defaults are RISE's insertion substrate (an 11-pixel kernel, sigma 5). Works
    for images smaller than the kernel.

    Examples
    --------
    >>> blurred = gaussian_blur(torch.ones(1, 3, 4, 4))
    >>> torch.allclose(blurred, torch.ones(1, 3, 4, 4))
    True
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel_size must be a positive odd int, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0, got {sigma!r}")
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=torch.float32)
    offsets = offsets - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    half = kernel_size // 2
    flat = images.reshape(batch * channels, 1, height, width)
    flat = F.pad(flat, (half, half, half, half), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(batch, channels, height, width)


def make_substrate(
    inputs: torch.Tensor,
    substrate: Substrate,
    *,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """The replacement image for every example, shape and device of ``inputs``.

    Parameters
    ----------
    inputs : Tensor
        ``(B, C, H, W)``.
    substrate : {"zeros", "blur"}, float or Tensor
        ``"zeros"``: black; ``"blur"``: :func:`gaussian_blur` of the input; a number:
        that constant; a tensor: any shape that broadcasts to ``inputs``.

    Examples
    --------
    >>> make_substrate(torch.ones(1, 1, 1, 2), 0.5).tolist()
    [[[[0.5, 0.5]]]]
    """
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(inputs)
        if substrate == "blur":
            return gaussian_blur(inputs, kernel_size=blur_kernel_size, sigma=blur_sigma)
        raise ValueError(
            f"substrate must be 'zeros', 'blur', a number or a tensor, got {substrate!r}"
        )
    if isinstance(substrate, bool):
        raise TypeError("substrate must be 'zeros', 'blur', a number or a tensor, not a bool")
    if isinstance(substrate, (int, float)):
        return torch.full_like(inputs, float(substrate))
    if isinstance(substrate, torch.Tensor):
        try:
            expanded = torch.broadcast_to(substrate, inputs.shape)
        except RuntimeError as error:
            raise ValueError(
                f"a substrate tensor must broadcast to the inputs' shape {tuple(inputs.shape)}, "
                f"got shape {tuple(substrate.shape)}"
            ) from error
        if substrate.device != inputs.device:
            raise ValueError(
                f"the substrate is on {substrate.device} but the inputs are on {inputs.device}"
            )
        return expanded.to(inputs.dtype)
    raise TypeError(
        f"substrate must be 'zeros', 'blur', a number or a tensor, got {type(substrate).__name__}"
    )
