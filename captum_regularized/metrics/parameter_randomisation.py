"""Sanity checks for saliency maps: model-parameter and data randomisation (Adebayo et al., 2018).

A map that explains a model must change when the model's learned parameters are
destroyed (:func:`model_parameter_randomisation`) or when it was trained on shuffled
labels (:func:`data_randomisation`). Maps are compared per example by
:func:`map_similarity`; high similarity means the method is blind to what the model
learned. Only a copy of the model is randomised (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from torch import nn

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.checks import (
    check_autograd_available,
    check_batch_sizes,
    check_finite,
    check_floating,
    check_same_device,
)
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import preserved_model
from captum_regularized._internal.targets import class_indices

__all__ = [
    "MapSimilarity",
    "ParameterRandomisation",
    "data_randomisation",
    "map_similarity",
    "model_parameter_randomisation",
]

Explain = Callable[..., torch.Tensor] | type
"""``explain(model, inputs, target) -> maps``, or an attribution class such as ``Saliency``."""

SeedType = int | torch.Generator | Sequence[int]
"""The re-initialisation seed: one int, a generator, or one int per layer."""

MODES = ("cascading", "independent")
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


class MapSimilarity(NamedTuple):
    """Per-example similarities ``(B,)`` of two batches of maps (see :func:`map_similarity`).

    Examples
    --------
    >>> maps = torch.rand(3, 8, 8)
    >>> [round(float(v.min()), 4) for v in map_similarity(maps, maps)]
    [1.0, 1.0, 1.0, 1.0]
    """

    spearman_abs: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor
    cosine: torch.Tensor


@dataclass(frozen=True)
class ParameterRandomisation:
    """Result of :func:`model_parameter_randomisation`.

    ``layers``: the randomised layers' names, first one first; ``scores``: for each
    layer, the :class:`MapSimilarity` of the original map and the map after its step;
    ``seeds``: each layer's seed; ``mode``: ``"cascading"`` or ``"independent"``.

    Examples
    --------
    >>> scores = {"fc": MapSimilarity(*[torch.ones(2)] * 4)}
    >>> ParameterRandomisation(("fc",), scores, (0,), "cascading").curve("ssim").shape
    torch.Size([1, 2])
    """

    layers: tuple[str, ...]
    scores: dict[str, MapSimilarity]
    seeds: tuple[int, ...]
    mode: str

    def curve(self, similarity: str = "spearman_abs") -> torch.Tensor:
        """One similarity (a field of :class:`MapSimilarity`) at every step, ``(L, B)``."""
        if similarity not in MapSimilarity._fields:
            raise ValueError(
                f"similarity must be one of {MapSimilarity._fields}, got {similarity!r}"
            )
        return torch.stack([getattr(self.scores[name], similarity) for name in self.layers])


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks of a ``(B, N)`` tensor, 0-based, ties sharing their average rank."""
    ordered, order = values.sort(dim=1)
    count = values.shape[1]
    positions = torch.arange(count, device=values.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    # First and last sorted position of each run of equal values.
    first = torch.where(starts, positions, 0).cummax(dim=1).values
    last = torch.where(ends, positions, count - 1).flip(1).cummin(dim=1).values.flip(1)
    average = (first + last).to(values.dtype) / 2
    return torch.empty_like(average).scatter_(1, order, average)


def _unit_rows(values: torch.Tensor) -> torch.Tensor:
    """Every row divided by its norm; an all-zero row stays zero."""
    norms = values.norm(dim=1, keepdim=True)
    return values / torch.where(norms > 0, norms, torch.ones_like(norms))


def _centred_unit_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks minus their mean, scaled to unit norm: Spearman's rho is their dot product."""
    ranks = _average_ranks(values)
    return _unit_rows(ranks - ranks.mean(dim=1, keepdim=True))


def _gaussian_filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian average of ``(N, 1, H, W)`` images over the valid windows."""
    size = window.numel()
    return F.conv2d(F.conv2d(images, window.view(1, 1, 1, size)), window.view(1, 1, size, 1))


def _ssim_window(
    height: int, width: int, size: int, sigma: float, like: torch.Tensor
) -> torch.Tensor:
    """1-D Gaussian weights summing to 1, shrunk to the largest odd size that fits the map."""
    size = min(size, height, width)
    size -= 1 - size % 2
    offsets = torch.arange(size, device=like.device, dtype=like.dtype) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


class _MapFeatures(NamedTuple):
    """What the similarities need of one batch of maps: ranks, directions, SSIM moments."""

    abs_ranks: torch.Tensor
    signed_ranks: torch.Tensor
    direction: torch.Tensor
    images: torch.Tensor  # (B * C, 1, H, W), scaled to [0, 1]
    window: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


def _features(maps: torch.Tensor, window_size: int, sigma: float) -> _MapFeatures:
    """Centred ranks, unit directions and SSIM moments of ``(B, [C,] H, W)`` maps."""
    dtype = torch.promote_types(maps.dtype, torch.float32)
    maps = maps.detach().to(dtype)
    flat = maps.flatten(1)
    magnitude = flat.abs()
    low = magnitude.min(dim=1, keepdim=True).values
    span = magnitude.max(dim=1, keepdim=True).values - low
    scaled = (magnitude - low) / torch.where(span > 0, span, torch.ones_like(span))
    height, width = maps.shape[-2:]
    images = scaled.reshape(-1, 1, height, width)
    window = _ssim_window(height, width, window_size, sigma, images)
    mean = _gaussian_filter(images, window)
    variance = _gaussian_filter(images * images, window) - mean * mean
    ranks = _centred_unit_ranks(magnitude), _centred_unit_ranks(flat)
    return _MapFeatures(*ranks, _unit_rows(flat), images, window, mean, variance)


def _ssim(a: _MapFeatures, b: _MapFeatures, batch: int) -> torch.Tensor:
    """Mean SSIM over the valid windows (and channels) of every example, ``(B,)``."""
    covariance = _gaussian_filter(a.images * b.images, a.window) - a.mean * b.mean
    luminance = (2 * a.mean * b.mean + SSIM_C1) / (a.mean**2 + b.mean**2 + SSIM_C1)
    structure = (2 * covariance + SSIM_C2) / (a.variance + b.variance + SSIM_C2)
    return (luminance * structure).reshape(batch, -1).mean(dim=1)


def _compare(first: _MapFeatures, second: _MapFeatures) -> MapSimilarity:
    """The four similarities of two batches of maps, from their features."""
    return MapSimilarity(
        (first.abs_ranks * second.abs_ranks).sum(dim=1),
        (first.signed_ranks * second.signed_ranks).sum(dim=1),
        _ssim(first, second, first.direction.shape[0]),
        (first.direction * second.direction).sum(dim=1),
    )


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The similarities run in full precision, also inside ``torch.autocast``."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _check_ssim_settings(window: int, sigma: float) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"ssim_window must be a positive odd int, got {window!r}")
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
        raise ValueError(f"ssim_sigma must be a number > 0, got {sigma!r}")


def _check_map_tensor(maps: object, what: str) -> None:
    """Raise unless ``maps`` is a floating ``(B, H, W)`` or ``(B, C, H, W)`` tensor."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of maps, got {type(maps).__name__}")
    if maps.dim() not in (3, 4):
        raise ValueError(
            f"{what} must be maps of shape (batch, height, width) or (batch, channels, height, "
            f"width), got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {maps.dtype}")


def map_similarity(
    maps: torch.Tensor,
    other: torch.Tensor,
    *,
    ssim_window: int = 11,
    ssim_sigma: float = 1.5,
) -> MapSimilarity:
    """Per-example Spearman (absolute and signed), SSIM and cosine similarity of two map batches.

    For maps ``a`` and ``b`` of one example: ``spearman_abs`` / ``spearman`` are
    :math:`\\rho = \\operatorname{cov}(R_a, R_b) / (\\sigma_{R_a} \\sigma_{R_b})` of the
    ranks :math:`R` of the flattened absolute / signed maps (ties share their average
    rank); ``cosine`` is :math:`\\langle a, b \\rangle / (\\lVert a \\rVert \\lVert b \\rVert)`;
    ``ssim`` is Wang et al.'s (2004) SSIM of the absolute maps min-max scaled to
    ``[0, 1]`` (Gaussian window, :math:`C_1 = 0.01^2`, :math:`C_2 = 0.03^2`), averaged
    over the valid window positions and the channels. A constant or zero map gives 0.

    Parameters
    ----------
    maps, other : Tensor
        Maps of one shape, ``(B, H, W)`` or ``(B, C, H, W)``, finite, on one device.
    ssim_window, ssim_sigma : int, float
        Side (odd; shrunk to fit small maps) and standard deviation of the SSIM window.

    Returns
    -------
    MapSimilarity
        Four ``(B,)`` tensors (float32, float64 for float64 maps).

    Examples
    --------
    >>> a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    >>> b = torch.tensor([[[10.0, 20.0], [40.0, 30.0]]])
    >>> result = map_similarity(a, b)
    >>> round(float(result.spearman), 4), round(float(result.cosine), 4)
    (0.8, 0.9667)
    """
    _check_ssim_settings(ssim_window, ssim_sigma)
    _check_map_tensor(maps, "maps")
    _check_map_tensor(other, "other")
    if maps.shape != other.shape:
        raise ValueError(
            f"maps and other must have the same shape, got {tuple(maps.shape)} and "
            f"{tuple(other.shape)}"
        )
    if maps.device != other.device:
        raise ValueError(f"maps are on {maps.device} but other is on {other.device}")
    check_finite((maps,), "maps")
    check_finite((other,), "other")
    return _similarity(maps, other, ssim_window, ssim_sigma)


def _similarity(a: torch.Tensor, b: torch.Tensor, window: int, sigma: float) -> MapSimilarity:
    with _no_autocast(a.device):
        return _compare(_features(a, window, sigma), _features(b, window, sigma))


ExplainCall = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def _explainer(explain: object, explain_kwargs: Mapping[str, Any] | None) -> ExplainCall:
    """``explain`` as one call ``(model, inputs, target) -> maps``."""
    kwargs = dict(explain_kwargs or {})
    usage = (
        "explain must be an attribution class (e.g. captum.attr.Saliency) or a function "
        "explain(model, inputs, target)"
    )
    if isinstance(explain, Attribution):
        raise TypeError(
            f"{usage}, not a {type(explain).__name__} object bound to a model: pass the class "
            "itself, it is built on every randomised model"
        )
    if isinstance(explain, type):
        method: Any = explain
        return lambda model, inputs, target: method(model).attribute(
            inputs, target=target, **kwargs
        )
    if callable(explain):
        function = explain
        return lambda model, inputs, target: function(model, inputs, target, **kwargs)
    raise TypeError(f"{usage}, got {type(explain).__name__}")


def _explained(
    explain: ExplainCall, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
    expected: torch.Size | None, which: str,
) -> torch.Tensor:
    """The maps ``explain`` gives for ``model`` (checked), detached."""
    with torch.enable_grad():
        maps = explain(model, fresh_leaf(inputs), target)
    what = f"explain's output for {which}"
    _check_map_tensor(maps, what)
    if expected is None and maps.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{what} must have the batch size of the inputs ({inputs.shape[0]}) in dim 0, "
            f"got shape {tuple(maps.shape)}"
        )
    if expected is not None and maps.shape != expected:
        raise ValueError(
            f"{what} has shape {tuple(maps.shape)}, but the original model's maps have shape "
            f"{tuple(expected)}"
        )
    if maps.device != inputs.device:
        raise ValueError(f"{what} is on {maps.device}, the inputs on {inputs.device}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return maps.detach()


def _checked_setup(
    models: Mapping[str, Any], inputs: object, explain: object,
    explain_kwargs: Mapping[str, Any] | None, ssim: tuple[int, float], who: str,
    mode: str = "cascading",
) -> tuple[ExplainCall, int]:
    """The checks both tests share; returns the explain call and the batch size."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    for name, value in models.items():
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
    check_autograd_available(who)
    _check_ssim_settings(*ssim)
    run = _explainer(explain, explain_kwargs)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    first, *others = models.values()
    check_floating((inputs,), "inputs")
    batch = check_batch_sizes((inputs,), "inputs")
    check_same_device((inputs,), first, "inputs")
    check_finite((inputs,), "inputs")
    for model in others:
        check_same_device((inputs,), model, "inputs")
    return run, batch


def _target_classes(model: nn.Module, inputs: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Every example's class ``(B,)``: ``target`` in any Captum form, ``None`` = prediction."""
    with torch.no_grad():
        output = logits_of(model(inputs), "model")
    return class_indices(output, target)


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _layer_names(model: nn.Module, layers: Sequence[str | nn.Module] | None) -> list[str]:
    """The layers to randomise, as names, checked."""
    if layers is None:
        found = [name for name, module in model.named_modules() if _has_own_parameters(module)]
        if not found:
            raise ValueError("model has no parameters to randomise")
        return found[::-1]
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence):
        raise TypeError(
            "layers must be a sequence of module names or modules of the model, got "
            f"{type(layers).__name__}"
        )
    if not layers:
        raise ValueError("layers must name at least one module")
    modules = dict(model.named_modules())
    names_of = {id(module): name for name, module in modules.items()}
    names: list[str] = []
    for entry in layers:
        if isinstance(entry, nn.Module):
            name, label = names_of.get(id(entry)), type(entry).__name__
        elif isinstance(entry, str):
            name, label = (entry if entry in modules else None), repr(entry)
        else:
            raise TypeError(
                f"layers entries must be module names or modules, got {type(entry).__name__}"
            )
        if name is None:
            raise ValueError(f"layers entry {label} is not a module of the model")
        if not _has_own_parameters(modules[name]):
            raise ValueError(
                f"layers entry {name!r} ({type(modules[name]).__name__}) has no parameters "
                "of its own to randomise"
            )
        if name in names:
            raise ValueError(f"layers entry {name!r} is given twice")
        names.append(name)
    return names


def _layer_seeds(seed: SeedType, count: int) -> list[int]:
    """One seed per layer: drawn from an int seed or a generator, or given one by one."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed = torch.Generator().manual_seed(seed)
    if isinstance(seed, torch.Generator):
        return torch.randint(0, 2**62, (count,), generator=seed, device=seed.device).tolist()
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
        if len(seeds) != count or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(
                f"seed given per layer must hold {count} ints (one per randomised layer), "
                f"got {seeds!r}"
            )
        return seeds
    raise TypeError(
        f"seed must be an int, a torch.Generator or a sequence of ints, got {type(seed).__name__}"
    )


def _fan_in_std(parameter: torch.Tensor) -> float:
    """``1 / sqrt(fan_in)``, with ``fan_in`` the elements of one slice along dim 0."""
    fan_in = parameter[0].numel() if parameter.dim() > 1 else parameter.numel()
    return 1.0 / math.sqrt(max(fan_in, 1))


def _reinitialise(module: nn.Module, seed: int) -> None:
    """``reset_parameters()`` (else ``N(0, 1 / fan_in)``) from ``seed``, generators forked."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda, device_type="cuda"), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for parameter in module.parameters(recurse=False):
                parameter.normal_(0.0, _fan_in_std(parameter))


def _saved_state(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every parameter and buffer of ``module`` (children included) and a copy of it."""
    return [(t, t.detach().clone()) for t in itertools.chain(module.parameters(), module.buffers())]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for tensor, value in saved:
            tensor.copy_(value)


def _working_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model``; the caller's model is never randomised."""
    try:
        working = copy.deepcopy(model)
    except (RuntimeError, TypeError) as error:
        raise TypeError(
            f"model could not be deep-copied for randomisation ({error}); the test randomises "
            "a copy so that the model is left as found"
        ) from error
    return working.eval()


def _empty_scores(inputs: torch.Tensor) -> MapSimilarity:
    return MapSimilarity(*[torch.zeros(0, device=inputs.device)] * 4)


def model_parameter_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetType,
    explain: Explain,
    *,
    mode: str = "cascading",
    layers: Sequence[str | nn.Module] | None = None,
    seed: SeedType = 0,
    explain_kwargs: Mapping[str, Any] | None = None,
    ssim_window: int = 11,
    ssim_sigma: float = 1.5,
) -> ParameterRandomisation:
    """Similarity of a method's maps before and after re-initialising the model's layers.

    Adebayo et al.'s test: step ``k`` re-initialises layers ``1..k`` (cascading, output
    first) or layer ``k`` (independent) of an eval-mode copy, scored by :func:`map_similarity`.

    Parameters
    ----------
    model, inputs, target : nn.Module, Tensor, Captum target
        The trained classifier (left as found), a floating finite batch on its device,
        the class explained (any Captum form; ``None``: the trained model's prediction).
    explain : type or callable
        An attribution class (``explain(model).attribute(inputs, target=target, **kw)``)
        or ``explain(model, inputs, target, **kw)``, with ``kw = explain_kwargs``.
    mode, layers, seed
        ``"cascading"`` or ``"independent"``; modules with parameters of their own, by
        name or object, in order (default all, last registered first); an int or a
        generator drawing one seed per layer, or the seeds.
    explain_kwargs, ssim_window, ssim_sigma
        Extra keyword arguments of ``explain``; as in :func:`map_similarity`.

    Returns
    -------
    ParameterRandomisation

    Raises
    ------
    TypeError, ValueError
        Arguments or maps that do not fit (RuntimeError in ``torch.inference_mode()``).

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> result = model_parameter_randomisation(model, torch.rand(2, 3, 8, 8), [0, 2], Saliency)
    >>> result.layers[:2], result.curve("ssim").shape
    (('classifier', 'block3.1'), torch.Size([9, 2]))
    """
    ssim = (ssim_window, ssim_sigma)
    run, _ = _checked_setup(
        {"model": model}, inputs, explain, explain_kwargs, ssim, "model_parameter_randomisation",
        mode,
    )
    names = _layer_names(model, layers)
    seeds = _layer_seeds(seed, len(names))
    scores = _randomised_scores(run, model, inputs, target, dict(zip(names, seeds)), mode, ssim)
    return ParameterRandomisation(tuple(names), scores, tuple(seeds), mode)


def _randomised_scores(
    run: ExplainCall, model: nn.Module, inputs: torch.Tensor, target: TargetType,
    seeds: dict[str, int], mode: str, ssim: tuple[int, float],
) -> dict[str, MapSimilarity]:
    """The similarities after each step, on a copy of ``model``."""
    if inputs.shape[0] == 0:
        return {name: _empty_scores(inputs) for name in seeds}
    working = _working_copy(model)
    classes = _target_classes(working, inputs, target)
    original = _explained(run, working, inputs, classes, None, "the original model")
    with _no_autocast(inputs.device):
        reference = _features(original, *ssim)
    scores: dict[str, MapSimilarity] = {}
    for name, layer_seed in seeds.items():
        module = working.get_submodule(name)
        saved = _saved_state(module) if mode == "independent" else []
        _reinitialise(module, layer_seed)
        maps = _explained(
            run, working, inputs, classes, original.shape, f"the model with {name!r} randomised"
        )
        with _no_autocast(inputs.device):
            scores[name] = _compare(reference, _features(maps, *ssim))
        _restore(saved)
    return scores


def data_randomisation(
    model: nn.Module,
    randomised_model: nn.Module,
    inputs: torch.Tensor,
    target: TargetType,
    explain: Explain,
    *,
    explain_kwargs: Mapping[str, Any] | None = None,
    ssim_window: int = 11,
    ssim_sigma: float = 1.5,
) -> MapSimilarity:
    """Similarity of a method's maps on a model and on one trained on shuffled labels.

    Adebayo et al.'s data randomisation test: both models (run in eval mode, left as
    found) explain ``inputs`` for the same classes (``target=None``: those ``model``
    predicts) and :func:`map_similarity` compares the maps; low similarity passes. The
    other arguments and the errors are those of :func:`model_parameter_randomisation`.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> from captum_regularized.models import SimpleCNN
    >>> trained, shuffled = SimpleCNN(3, width=4).eval(), SimpleCNN(3, width=4).eval()
    >>> result = data_randomisation(trained, shuffled, torch.rand(2, 3, 8, 8), None, Saliency)
    >>> result.spearman_abs.shape
    torch.Size([2])
    """
    run, batch = _checked_setup(
        {"model": model, "randomised_model": randomised_model}, inputs, explain,
        explain_kwargs, (ssim_window, ssim_sigma), "data_randomisation",
    )
    if batch == 0:
        return _empty_scores(inputs)
    with preserved_model(model, eval_mode=True), preserved_model(randomised_model, eval_mode=True):
        classes = _target_classes(model, inputs, target)
        original = _explained(run, model, inputs, classes, None, "model")
        other = _explained(
            run, randomised_model, inputs, classes, original.shape, "randomised_model"
        )
    return _similarity(original, other, ssim_window, ssim_sigma)
