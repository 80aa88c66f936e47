r"""Robustness of a saliency map to the top-k interpretation attack (Ghorbani et al., 2019).

The attack ("Interpretation of neural networks is fragile", AAAI 2019) moves an image
inside a small :math:`L_\infty` ball, keeping the prediction, so that its saliency map
leaves the :math:`k` pixels :math:`B` it first pointed at; the share of :math:`B` still
in the top-k (the *top-k intersection*) measures how fragile the map is. With
:math:`S(x)_p` the summed :math:`|\partial f_c / \partial x|` of pixel :math:`p` and
:math:`D(x) = -\sum_{p \in B} S(x)_p / \sum_q S(x)_q`,

.. math::

    x^{t+1} = \Pi_{\|x - x_0\|_\infty \le \epsilon}
    \big(x^t + \alpha \, \mathrm{sign}(\nabla_x D(x^t))\big),

with every ReLU replaced by :math:`\mathrm{softplus}_\beta` in the direction; the
accepted iterate with the smallest intersection is kept (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from captum_regularized._internal.captum_compat import TargetType, run_forward
from captum_regularized._internal.checks import (
    check_autograd_available,
    check_finite,
    check_same_device,
)
from captum_regularized._internal.guided_relu import RELU_FUNCTIONS, check_not_compiled
from captum_regularized._internal.method_maps import Method, method_maps
from captum_regularized._internal.model_state import (
    find_module,
    preserved_model,
    unwrap_data_parallel,
)
from captum_regularized._internal.pixel_maps import per_pixel_map
from captum_regularized._internal.targets import class_indices
from captum_regularized.metrics._perturbation import _check_image_batch, pixel_ranks

__all__ = ["DEFAULT_TOP_K_SHARE", "InterpretationAttack", "interpretation_attack"]

DEFAULT_TOP_K_SHARE = 0.02
"""``k=None`` means this share of the pixels (the paper's 1000 of 224 x 224)."""

_IN_PLACE = frozenset({torch.relu_, torch.Tensor.relu_})


@dataclass(frozen=True)
class InterpretationAttack:
    """Result of :func:`interpretation_attack`, one row per example.

    ``intersection_before`` ``(B,)``: top-k intersection of a second clean map with the
    first (1 for a deterministic map); ``intersection``: after the attack;
    ``label_kept``: the clean class is still predicted on ``adversarial_inputs``
    ``(B, C, H, W)``, the accepted iterate, ``inputs + perturbation``.

    Examples
    --------
    >>> x, kept = torch.zeros(2, 1, 2, 2), torch.tensor([True, True])
    >>> result = InterpretationAttack(torch.ones(2), torch.tensor([0.5, 1.0]), kept, x, x)
    >>> float(result.intersection.mean())
    0.75
    """

    intersection_before: torch.Tensor
    intersection: torch.Tensor
    label_kept: torch.Tensor
    perturbation: torch.Tensor
    adversarial_inputs: torch.Tensor


class _SoftplusForReLU(TorchFunctionMode):
    """Every ReLU call (module or functional, in place or not) computes ``softplus_beta``.

    An in-place form writes the surrogate's value into its input, as the ReLU would have.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        try:
            is_relu = func in RELU_FUNCTIONS
        except TypeError:  # an unhashable callable is no ReLU
            is_relu = False
        if not is_relu:
            return func(*args, **kwargs)
        z = cast(torch.Tensor, args[0] if args else kwargs.get("input", kwargs.get("self")))
        in_place = func in _IN_PLACE or (
            func is F.relu and bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        )
        if not in_place:
            return F.softplus(z, beta=self.beta)
        return z.copy_(F.softplus(z.clone(), beta=self.beta))


def _positive_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_range(input_range: object, inputs: torch.Tensor) -> tuple[float, float] | None:
    if input_range is None:
        return None
    if not isinstance(input_range, (tuple, list)) or len(input_range) != 2 or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in input_range
    ):
        raise TypeError(f"input_range must be a pair of numbers (lo, hi), got {input_range!r}")
    low, high = float(input_range[0]), float(input_range[1])
    if not low < high:
        raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {input_range!r}")
    if inputs.numel() and not bool(((inputs >= low) & (inputs <= high)).all()):
        raise ValueError(f"inputs must lie inside input_range {input_range!r}")
    return low, high


def _check_model(forward: Callable[..., Any]) -> torch.nn.Module | None:
    if not callable(forward):
        raise TypeError(f"model must be callable, got {type(forward).__name__}")
    module = find_module(forward)
    check_not_compiled(module, "model")
    if module is not None:
        for name, sub in module.named_modules():
            if isinstance(sub, torch.jit.ScriptModule):
                where = f"model.{name}" if name else "model"
                raise ValueError(
                    f"{where} is a TorchScript module; the softplus surrogate cannot reach "
                    "the ReLUs inside it. Use the original Python module there instead."
                )
    return module


def _shares_on(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each (non-negative) per-pixel map ``(B, H*W)`` that lies on ``region``."""
    total = maps.sum(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps * region).sum(dim=1) / total


@dataclass
class _Attack:
    """The attack of one chunk of examples: the model, classes, maps and settings."""

    forward: Callable[..., Any]
    classes: torch.Tensor
    k: int
    beta: float
    explain: Method
    epsilon: float
    steps: int
    step_size: float
    bounds: tuple[float, float] | None

    def scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The real model's predicted classes and the scored per-pixel map ``(B, H*W)``."""
        if self.explain is None:
            leaf = x.detach().requires_grad_(True)
            logits = run_forward(self.forward, (leaf,))
            scores = logits.gather(1, self.classes[:, None]).sum()
            (gradient,) = torch.autograd.grad(scores, leaf, allow_unused=True)
            if gradient is None:
                gradient = torch.zeros_like(leaf)
            maps = gradient.abs().sum(dim=1)
        else:
            with torch.no_grad():
                logits = run_forward(self.forward, (x,))
            raw = cast(torch.Tensor, method_maps(self.explain, x, self.classes, {}))
            maps = per_pixel_map(
                raw.abs(), x.shape[0], (x.shape[2], x.shape[3]), channel_reduction="sum",
                device=x.device, name="the maps of explain",
            )
        return logits.detach().argmax(dim=1), maps.detach().reshape(x.shape[0], -1).float()

    def top_k(self, maps: torch.Tensor) -> torch.Tensor:
        """The ``k`` highest pixels of every map (ties in raster order), boolean ``(B, H*W)``."""
        return pixel_ranks(maps) < self.k

    def direction(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """``sign(grad_x D(x))`` on the softplus surrogate (double backpropagation)."""
        leaf = x.detach().requires_grad_(True)
        with _SoftplusForReLU(self.beta):
            logits = run_forward(self.forward, (leaf,))
        scores = logits.gather(1, self.classes[:, None]).sum()
        (gradient,) = torch.autograd.grad(scores, leaf, create_graph=True, allow_unused=True)
        if gradient is None or not gradient.requires_grad:
            return torch.zeros_like(x)  # the map does not depend on x: nothing to attack
        saliency = gradient.abs().sum(dim=1).reshape(x.shape[0], -1)
        dissimilarity = -_shares_on(saliency, region)
        (ascent,) = torch.autograd.grad(dissimilarity.sum(), leaf, allow_unused=True)
        return torch.zeros_like(x) if ascent is None else ascent.sign()

    def run(self, x0: torch.Tensor, predicted: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(intersection_before, intersection, label_kept, adversarial)`` of the chunk."""
        low, high = x0 - self.epsilon, x0 + self.epsilon
        if self.bounds is not None:
            low, high = low.clamp_min(self.bounds[0]), high.clamp_max(self.bounds[1])
        _, clean_maps = self.scored(x0)
        region = self.top_k(clean_maps)
        _, again = self.scored(x0)
        best_hits = (self.top_k(again) & region).sum(dim=1)
        before = best_hits
        best_share = _shares_on(again, region)
        best, x = x0, x0
        for _ in range(self.steps):
            step = self.step_size * self.direction(x, region)
            x = torch.minimum(torch.maximum(x + step, low), high)
            label, maps = self.scored(x)
            hits = (self.top_k(maps) & region).sum(dim=1)
            share = _shares_on(maps, region)
            better = (label == predicted) & (
                (hits < best_hits) | ((hits == best_hits) & (share < best_share))
            )
            best = torch.where(better[:, None, None, None], x, best)
            best_hits = torch.where(better, hits, best_hits)
            best_share = torch.where(better, share, best_share)
        with torch.no_grad():
            kept = run_forward(self.forward, (best,)).argmax(dim=1) == predicted
        return before, best_hits, kept, best


def interpretation_attack(
    model: Callable[..., Any],
    inputs: torch.Tensor,
    target: TargetType = None,
    *,
    epsilon: float = 8 / 255,
    steps: int = 40,
    step_size: float | None = None,
    k: int | None = None,
    beta: float = 10.0,
    input_range: tuple[float, float] | None = None,
    explain: Method = None,
    internal_batch_size: int | None = None,
) -> InterpretationAttack:
    r"""Top-k intersection of a saliency map before and after the top-k attack.

    Parameters
    ----------
    model, inputs : callable, Tensor
        The classifier ``(B, C, H, W) -> (B, classes)`` (run in eval mode with frozen
        parameters, left as found) and floating, finite images on its device.
    target : int, list, Tensor, tuple or None
        The class whose map is attacked (any Captum form); ``None``: the *predicted*
        class, which the attack always keeps.
    epsilon, steps, step_size
        Radius of the :math:`L_\infty` ball, iterations :math:`T` and :math:`\alpha`
        (default ``2.5 * epsilon / steps``).
    k, internal_batch_size : int, optional
        Top-k region size in ``[1, H * W]`` (default :data:`DEFAULT_TOP_K_SHARE` of the
        pixels, at least 1); examples attacked together (default all).
    beta, input_range
        Sharpness of the softplus standing for ReLU; valid pixel range, if any.
    explain : Captum attribution object or callable, optional
        The map scored (``|explain.attribute(x, target=classes)|`` or ``|explain(x,
        classes)|`` summed over channels); default the plain saliency, which always
        gives the direction.

    Returns
    -------
    InterpretationAttack

    Raises
    ------
    TypeError, ValueError
        Inputs, settings, ``explain`` or a model that do not fit (RuntimeError inside
        ``torch.inference_mode()``).

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4, batch_norm=False)
    >>> result = interpretation_attack(model, torch.rand(2, 3, 8, 8), epsilon=0.05, steps=3,
    ...                                k=6, input_range=(0.0, 1.0))
    >>> result.intersection_before.tolist(), result.label_kept.tolist()
    ([1.0, 1.0], [True, True])
    """
    _check_image_batch(inputs)
    check_autograd_available("interpretation_attack")
    module = _check_model(model)
    check_same_device((inputs,), module)
    check_finite((inputs,))
    epsilon = _positive_number(epsilon, "epsilon")
    steps = _check_int(steps, "steps", 1)
    step_size = 2.5 * epsilon / steps if step_size is None else _positive_number(
        step_size, "step_size"
    )
    beta = _positive_number(beta, "beta")
    batch, _, height, width = inputs.shape
    pixels = height * width
    k = max(1, round(DEFAULT_TOP_K_SHARE * pixels)) if k is None else _check_int(
        k, "k", 1, pixels
    )
    chunk = batch if internal_batch_size is None else _check_int(
        internal_batch_size, "internal_batch_size", 1
    )
    if explain is not None and not (hasattr(explain, "attribute") or callable(explain)):
        raise TypeError(
            "explain must be a Captum attribution object, a callable explain(inputs, "
            f"targets) or None, got {type(explain).__name__}"
        )
    bounds = _check_range(input_range, inputs)
    x = inputs.clone() if inputs.is_inference() else inputs.detach()  # made in inference mode
    if batch == 0:
        empty = x.new_zeros((0,))
        return InterpretationAttack(
            empty, empty.clone(), torch.zeros(0, dtype=torch.bool, device=x.device),
            x.clone(), x.clone(),
        )
    forward = unwrap_data_parallel(model)
    pieces: list[tuple[torch.Tensor, ...]] = []
    with preserved_model(module, eval_mode=True), torch.enable_grad():
        if module is not None:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        with torch.no_grad():
            logits = torch.cat([
                run_forward(forward, (x[start:start + chunk],))
                for start in range(0, batch, chunk)
            ])
        classes = class_indices(logits, target)
        predicted = logits.argmax(dim=1)
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            attack = _Attack(
                forward, classes[part], k, beta, explain, epsilon, steps, step_size, bounds
            )
            pieces.append(attack.run(x[part], predicted[part]))
    before, hits, kept, adversarial = (torch.cat(parts) for parts in zip(*pieces))
    adversarial = adversarial.detach()
    return InterpretationAttack(
        before.to(x.dtype) / k, hits.to(x.dtype) / k, kept, adversarial - x, adversarial
    )
