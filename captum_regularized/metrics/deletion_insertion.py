"""Deletion and insertion curves (RISE, Petsiuk et al., BMVC 2018).

Deletion replaces the pixels of an image by a substrate in order of decreasing
attribution, in ``steps`` equal chunks, and records the target-class probability after
every chunk; insertion starts from the substrate (by default a blurred copy) and puts
the pixels back in the same order. With :math:`s_k` the score after
:math:`n_k = \\lfloor k H W / \\text{steps} \\rfloor` pixels,

.. math::

    \\mathrm{AUC} = \\sum_{k=1}^{\\text{steps}} \\frac{s_{k-1} + s_k}{2}
    \\left(\\frac{n_k - n_{k-1}}{H W}\\right),

in ``[0, 1]`` for probabilities: lower is better for deletion, higher for insertion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized.metrics._field_wrappers import takes_arguments_of
from captum_regularized.metrics._perturbation import check_map_settings, prepare_batch

__all__ = [
    "PerturbationCurve",
    "deletion_auc",
    "deletion_curve",
    "insertion_auc",
    "insertion_curve",
]

Substrate = str | float | torch.Tensor
"""What replaces removed pixels: ``"zeros"``, ``"blur"``, a number or a tensor."""


class PerturbationCurve(NamedTuple):
    """A deletion or insertion curve for every example.

    ``fractions`` ``(steps + 1,)`` of pixels removed (inserted), ``scores``
    ``(B, steps + 1)`` of the target class, and ``auc`` ``(B,)``, their trapezoid area.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> curve = deletion_curve(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8)
    >>> torch.allclose(curve.auc, torch.trapezoid(curve.scores, curve.fractions, dim=1))
    True
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


def _check_blur(kernel_size: int, sigma: float) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel_size must be a positive odd int, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0, got {sigma!r}")


def gaussian_blur(
    images: torch.Tensor, *, kernel_size: int = 11, sigma: float = 5.0
) -> torch.Tensor:
    """Blur every channel with a separable Gaussian (RISE's 11 and 5); edges replicated.

    Examples
    --------
    >>> torch.allclose(gaussian_blur(torch.ones(1, 3, 4, 4)), torch.ones(1, 3, 4, 4))
    True
    """
    _check_blur(kernel_size, sigma)
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


def check_curve_settings(
    steps: int,
    substrate: Substrate,
    channel_reduction: str,
    internal_batch_size: int | None,
    blur_kernel_size: int,
    blur_sigma: float,
) -> None:
    """The settings of :func:`deletion_curve` and :func:`insertion_curve`, checked."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    check_map_settings(channel_reduction, internal_batch_size)
    if isinstance(substrate, str):
        if substrate not in ("zeros", "blur"):
            raise ValueError(
                f"substrate must be 'zeros', 'blur', a number or a tensor, got {substrate!r}"
            )
        if substrate == "blur":
            _check_blur(blur_kernel_size, blur_sigma)
    elif isinstance(substrate, bool):
        raise TypeError("substrate must be 'zeros', 'blur', a number or a tensor, not a bool")
    elif not isinstance(substrate, (int, float, torch.Tensor)):
        kind = type(substrate).__name__
        raise TypeError(f"substrate must be 'zeros', 'blur', a number or a tensor, got {kind}")


def _substrate_images(
    inputs: torch.Tensor, substrate: Substrate, blur_kernel_size: int, blur_sigma: float
) -> torch.Tensor:
    """The replacement image of every example (checked settings), like ``inputs``."""
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(inputs)
        return gaussian_blur(inputs, kernel_size=blur_kernel_size, sigma=blur_sigma)
    if not isinstance(substrate, torch.Tensor):
        return torch.full_like(inputs, float(substrate))
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


def _curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType,
    *,
    insert: bool,
    steps: int,
    substrate: Substrate,
    channel_reduction: str,
    apply_softmax: bool,
    internal_batch_size: int | None,
    additional_forward_args: Any,
    blur_kernel_size: int,
    blur_sigma: float,
) -> PerturbationCurve:
    """The engine of both curves: ``insert`` says which image the ranked pixels come from."""
    check_curve_settings(
        steps, substrate, channel_reduction, internal_batch_size, blur_kernel_size, blur_sigma
    )
    prepared = prepare_batch(
        forward_func, inputs, attributions, channel_reduction=channel_reduction,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
    )
    inputs, batch, device = prepared.inputs, prepared.size, prepared.inputs.device
    pixels = inputs.shape[2] * inputs.shape[3]
    counts = [k * pixels // steps for k in range(steps + 1)]
    fractions = torch.tensor(counts, device=device, dtype=torch.float32) / pixels
    background = _substrate_images(inputs, substrate, blur_kernel_size, blur_sigma)
    if batch == 0:
        empty = torch.zeros(0, device=device)
        return PerturbationCurve(fractions, empty.view(0, steps + 1), empty)
    reduce, clean = prepared.target_probability(target, apply_softmax=apply_softmax)
    inner = counts[:-1] if insert else counts[1:]
    step_counts = torch.tensor(inner, device=device)[:, None].expand(steps, batch)
    top, rest = (inputs, background) if insert else (background, inputs)
    perturbed = prepared.ranked_scores(step_counts, top, rest, reduce).T
    pieces = (perturbed, clean[:, None]) if insert else (clean[:, None], perturbed)
    scores = torch.cat(pieces, dim=1)
    return PerturbationCurve(fractions, scores, torch.trapezoid(scores, fractions, dim=1))


def deletion_curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    steps: int = 100,
    substrate: Substrate = "zeros",
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> PerturbationCurve:
    """Target-class probability while the most-attributed pixels are removed.

    At step ``k`` the ``floor(k * H * W / steps)`` highest-ranked pixels (all channels;
    ties in raster order) are replaced by the substrate. Lower area = more faithful map.

    Parameters
    ----------
    forward_func : callable
        The model ``(B, C, H, W) -> (B, classes)``; run in eval mode without gradients.
    inputs : Tensor
        Images ``(B, C, H, W)``; never modified.
    attributions : Tensor
        Maps ``(B, C, H, W)``, ``(B, 1, h, w)``, ``(B, h, w)`` or ``(h, w)``.
    target : int, list, Tensor, tuple, callable or None
        Any Captum target form; ``None`` means the predicted class.
    steps : int
        Number of equal chunks of pixels; the curve has ``steps + 1`` points.
    substrate : {"zeros", "blur"}, float or Tensor
        Black, a Gaussian blur of the image, a constant, or a tensor like ``inputs``.
    channel_reduction : {"max", "sum", "mean"}
        See :func:`~captum_regularized.attr.reduce_channels`.
    apply_softmax : bool
        Score the softmax of the output.
    internal_batch_size : int, optional
        Images per forward pass (default 128); bounds memory.
    additional_forward_args : Any
        Extra forward arguments (per-example tensors follow their example).
    blur_kernel_size, blur_sigma : int, float
        The Gaussian of ``substrate="blur"`` (RISE: 11 and 5).

    Returns
    -------
    PerturbationCurve
        ``fractions`` removed, per-example ``scores`` (the clean image first), ``auc``.

    Raises
    ------
    TypeError, ValueError
        For bad settings, inputs, maps or targets.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> curve = deletion_curve(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), steps=4)
    >>> curve.scores.shape, curve.fractions.tolist()
    (torch.Size([2, 5]), [0.0, 0.25, 0.5, 0.75, 1.0])
    """
    return _curve(
        forward_func, inputs, attributions, target, insert=False, steps=steps,
        substrate=substrate, channel_reduction=channel_reduction, apply_softmax=apply_softmax,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
        blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma,
    )


def insertion_curve(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetType = None,
    *,
    steps: int = 100,
    substrate: Substrate = "blur",
    channel_reduction: str = "max",
    apply_softmax: bool = True,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> PerturbationCurve:
    """Target-class probability while the most-attributed pixels are put back.

    Starts from the substrate (RISE: a blurred copy) and at step ``k`` restores the
    ``floor(k * H * W / steps)`` highest-ranked pixels. Higher area = better map.
    Arguments as in :func:`deletion_curve`; ``scores`` end with the clean image.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    >>> insertion_curve(model, torch.rand(2, 3, 8, 8), torch.rand(2, 1, 4, 4), steps=4).auc.shape
    torch.Size([2])
    """
    return _curve(
        forward_func, inputs, attributions, target, insert=True, steps=steps,
        substrate=substrate, channel_reduction=channel_reduction, apply_softmax=apply_softmax,
        internal_batch_size=internal_batch_size, additional_forward_args=additional_forward_args,
        blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma,
    )


@takes_arguments_of(deletion_curve)
def deletion_auc(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Per-example area under :func:`deletion_curve`, ``(B,)``; lower is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> deletion_auc(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8).shape
    torch.Size([3])
    """
    return deletion_curve(*args, **kwargs).auc


@takes_arguments_of(insertion_curve)
def insertion_auc(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Per-example area under :func:`insertion_curve`, ``(B,)``; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> insertion_auc(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), steps=8).shape
    torch.Size([3])
    """
    return insertion_curve(*args, **kwargs).auc
