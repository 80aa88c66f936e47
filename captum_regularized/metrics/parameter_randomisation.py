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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    >>> same = map_similarity(maps, maps)
    >>> [round(float(v.min()), 4) for v in same]
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
    >>> result = ParameterRandomisation(
    ...     ("fc",), {"fc": MapSimilarity(*[torch.ones(2)] * 4)}, (0,), "cascading")
    >>> result.curve("ssim").shape
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


class _SsimStatistics(NamedTuple):
    """One batch of maps scaled to ``[0, 1]`` and its local Gaussian moments."""

    images: torch.Tensor  # (B * C, 1, H, W)
    window: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


class _MapFeatures(NamedTuple):
    """What the similarities need of one batch of maps, computed once per batch."""

    abs_ranks: torch.Tensor
    signed_ranks: torch.Tensor
    direction: torch.Tensor
    ssim: _SsimStatistics


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
    return _MapFeatures(
        _centred_unit_ranks(magnitude),
        _centred_unit_ranks(flat),
        _unit_rows(flat),
        _SsimStatistics(images, window, mean, variance),
    )


def _ssim(a: _SsimStatistics, b: _SsimStatistics, batch: int) -> torch.Tensor:
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
        _ssim(first.ssim, second.ssim, first.direction.shape[0]),
        (first.direction * second.direction).sum(dim=1),
    )


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """The similarities run in full precision, also inside ``torch.autocast``."""
    if device.type in ("cpu", "cuda"):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


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
    ``ssim`` (Wang et al., 2004) compares the absolute maps min-max scaled to ``[0, 1]``,

    .. math::

       \\operatorname{SSIM}(a, b) = \\operatorname{mean}_{w}
       \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
            {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)},

    with Gaussian-weighted local moments, :math:`C_1 = 0.01^2`, :math:`C_2 = 0.03^2`,
    the mean over the valid window positions ``w`` and the channels. A constant or
    zero map gives 0, never NaN.

    Parameters
    ----------
    maps, other : Tensor
        Maps of one shape, ``(B, H, W)`` or ``(B, C, H, W)``, finite, on one device.
    ssim_window : int
        Side of the Gaussian SSIM window (odd; shrunk to fit small maps).
    ssim_sigma : float
        Standard deviation of the Gaussian SSIM window.

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
    with _no_autocast(maps.device):
        return _compare(
            _features(maps, ssim_window, ssim_sigma), _features(other, ssim_window, ssim_sigma)
        )


ExplainCall = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


def _explainer(explain: object, explain_kwargs: Mapping[str, Any] | None) -> ExplainCall:
    """``explain`` as one call ``(model, inputs, target) -> maps``."""
    kwargs = dict(explain_kwargs or {})
    if isinstance(explain, Attribution):
        raise TypeError(
            "explain must be an attribution class (e.g. captum.attr.Saliency) or a function "
            f"explain(model, inputs, target), not a {type(explain).__name__} object bound to a "
            "model: pass the class itself, it is built on every randomised model"
        )
    if isinstance(explain, type):
        method: Any = explain
        return lambda model, inputs, target: method(model).attribute(
            inputs, target=target, **kwargs
        )
    if callable(explain):
        function = explain
        return lambda model, inputs, target: function(model, inputs, target, **kwargs)
    raise TypeError(
        "explain must be an attribution class (e.g. captum.attr.Saliency) or a function "
        f"explain(model, inputs, target), got {type(explain).__name__}"
    )


def _explained(
    explain: ExplainCall,
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    expected: torch.Size | None,
    which: str,
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


def _check_inputs(inputs: object, model: nn.Module, name: str = "inputs") -> int:
    """Check a batch of model inputs; returns its size."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    check_floating((inputs,), name)
    batch = check_batch_sizes((inputs,), name)
    check_same_device((inputs,), model, name)
    check_finite((inputs,), name)
    return batch


def _target_classes(model: nn.Module, inputs: torch.Tensor, target: TargetType) -> torch.Tensor:
    """Every example's class ``(B,)``: ``target`` in any Captum form, ``None`` = prediction."""
    with torch.no_grad():
        output = logits_of(model(inputs), "model")
    return class_indices(output, target)


def _parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules holding parameters of their own, from the output back."""
    return [
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ][::-1]


def _layer_names(model: nn.Module, layers: Sequence[str | nn.Module] | None) -> list[str]:
    """The layers to randomise, as names, checked."""
    if layers is None:
        found = _parameter_layers(model)
        if not found:
            raise ValueError("model has no parameters to randomise")
        return found
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
            if id(entry) not in names_of:
                raise ValueError(
                    f"layers entry {type(entry).__name__} is not a module of the model"
                )
            name = names_of[id(entry)]
        elif isinstance(entry, str):
            if entry not in modules:
                raise ValueError(f"layers entry {entry!r} is not a module of the model")
            name = entry
        else:
            raise TypeError(
                f"layers entries must be module names or modules, got {type(entry).__name__}"
            )
        if next(modules[name].parameters(recurse=False), None) is None:
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
    if isinstance(seed, torch.Generator):
        return torch.randint(0, 2**62, (count,), generator=seed, device=seed.device).tolist()
    if isinstance(seed, int) and not isinstance(seed, bool):
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 2**62, (count,), generator=generator).tolist()
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
    """Re-initialise ``module`` from ``seed`` (its ``reset_parameters()``, else
    ``N(0, 1 / fan_in)``) inside a fork of the CPU and CUDA generators."""
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
    """A copy of every parameter and buffer of ``module`` (its children's included)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return [(t, t.detach().clone()) for t in tensors]


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
    empty = torch.zeros(0, device=inputs.device)
    return MapSimilarity(empty, empty, empty, empty)


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

    The model-parameter randomisation test of Adebayo et al. (NeurIPS 2018). With
    :math:`\\ell_1, \\dots, \\ell_L` the layers, from the output back, an eval-mode
    copy :math:`f_\\theta` of the model explains the inputs as trained and once per step
    :math:`k`: cascading re-initialises :math:`\\ell_1, \\dots, \\ell_k`
    (:math:`\\theta^{(k)}`), independent :math:`\\ell_k` alone. The score is

    .. math::

       s_k(x) = \\operatorname{sim}\\big(E(f_\\theta, x, y),\\; E(f_{\\theta^{(k)}}, x, y)\\big)

    for each similarity of :func:`map_similarity`; a method that depends on what the
    model learned falls towards 0 as layers are randomised.

    Parameters
    ----------
    model : nn.Module
        The trained classifier; left as found (only a deep copy is randomised).
    inputs : Tensor
        A floating, finite batch ``(B, ...)`` on the model's device.
    target : int, list, Tensor, tuple, callable or None
        The class every model explains; ``None``: the trained model's prediction.
    explain : type or callable
        An attribution class, called as ``explain(model).attribute(inputs,
        target=target, **explain_kwargs)``, or ``explain(model, inputs, target,
        **explain_kwargs)``; maps ``(B, H, W)`` or ``(B, C, H, W)``.
    mode : {"cascading", "independent"}
        Cumulative (top to bottom) or one layer at a time.
    layers : sequence of str or nn.Module, optional
        The layers, by name or as modules, in the order of randomisation, each with
        parameters of its own. Default: every such module in reverse registration order.
    seed : int, torch.Generator or sequence of int
        An int or a generator draws one seed per layer; a sequence gives them.
    explain_kwargs : mapping, optional
        Extra keyword arguments of ``explain`` / ``attribute``.
    ssim_window, ssim_sigma : int, float
        The Gaussian SSIM window (Wang et al.: 11 and 1.5).

    Returns
    -------
    ParameterRandomisation

    Raises
    ------
    TypeError, ValueError
        For inputs, targets, ``explain``, ``layers``, seeds or maps that do not fit.
    RuntimeError
        Inside ``torch.inference_mode()``, where the maps cannot be computed.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4).eval()
    >>> result = model_parameter_randomisation(model, torch.rand(2, 3, 8, 8), [0, 2], Saliency)
    >>> result.layers[:2], result.curve("ssim").shape
    (('classifier', 'block3.1'), torch.Size([9, 2]))
    """
    who = "model_parameter_randomisation"
    if mode not in MODES:
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_autograd_available(who)
    _check_ssim_settings(ssim_window, ssim_sigma)
    run = _explainer(explain, explain_kwargs)
    batch = _check_inputs(inputs, model)
    names = _layer_names(model, layers)
    seeds = _layer_seeds(seed, len(names))
    if batch == 0:
        return ParameterRandomisation(
            tuple(names), {name: _empty_scores(inputs) for name in names}, tuple(seeds), mode
        )
    working = _working_copy(model)
    classes = _target_classes(working, inputs, target)
    original = _explained(run, working, inputs, classes, None, "the original model")
    with _no_autocast(inputs.device):
        reference = _features(original, ssim_window, ssim_sigma)
    scores: dict[str, MapSimilarity] = {}
    for name, layer_seed in zip(names, seeds):
        module = working.get_submodule(name)
        saved = _saved_state(module) if mode == "independent" else []
        _reinitialise(module, layer_seed)
        maps = _explained(
            run, working, inputs, classes, original.shape, f"the model with {name!r} randomised"
        )
        with _no_autocast(inputs.device):
            scores[name] = _compare(reference, _features(maps, ssim_window, ssim_sigma))
        _restore(saved)
    return ParameterRandomisation(tuple(names), scores, tuple(seeds), mode)


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

    The data randomisation test of Adebayo et al. (2018): both models explain
    ``inputs`` for the same classes and the maps are compared by
    :func:`map_similarity` (low similarity passes). ``model`` and
    ``randomised_model`` run in eval mode and are left as found; ``target=None`` means
    the classes ``model`` predicts; the other arguments and the errors are those of
    :func:`model_parameter_randomisation`.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> from captum_regularized.models import SimpleCNN
    >>> trained, shuffled = SimpleCNN(3, width=4).eval(), SimpleCNN(3, width=4).eval()
    >>> result = data_randomisation(trained, shuffled, torch.rand(2, 3, 8, 8), None, Saliency)
    >>> result.spearman_abs.shape
    torch.Size([2])
    """
    who = "data_randomisation"
    for name, value in (("model", model), ("randomised_model", randomised_model)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
    check_autograd_available(who)
    _check_ssim_settings(ssim_window, ssim_sigma)
    run = _explainer(explain, explain_kwargs)
    batch = _check_inputs(inputs, model)
    check_same_device((inputs,), randomised_model, "inputs")
    if batch == 0:
        return _empty_scores(inputs)
    with preserved_model(model, eval_mode=True), preserved_model(randomised_model, eval_mode=True):
        classes = _target_classes(model, inputs, target)
        original = _explained(run, model, inputs, classes, None, "model")
        other = _explained(run, randomised_model, inputs, classes, original.shape,
                           "randomised_model")
    with _no_autocast(inputs.device):
        return _compare(
            _features(original, ssim_window, ssim_sigma), _features(other, ssim_window, ssim_sigma)
        )
