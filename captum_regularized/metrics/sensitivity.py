r"""Max-sensitivity of an explanation (Yeh et al., NeurIPS 2019), as Captum's ``sensitivity_max``.

For an explanation :math:`\Phi`, an example :math:`x` and ``n_samples`` perturbations
:math:`\delta_s` drawn uniformly from the :math:`L_\infty` ball of radius ``radius``,

.. math::

    \mathrm{SENS}_{\max}(\Phi, x) = \max_{s = 1..n}
    \frac{\lVert \Phi(x + \delta_s) - \Phi(x) \rVert}{\lVert \Phi(x) \rVert},

with the norm of the flattened maps and :math:`\lVert \Phi(x) \rVert = 0` replaced by
1, as Captum does (:doc:`/design_notes/metrics`). Lower is better.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch

from captum_regularized._internal.batch_args import is_per_example
from captum_regularized._internal.captum_compat import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    run_forward,
)
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.model_state import find_module, preserved_model
from captum_regularized._internal.targets import is_score_target
from captum_regularized.metrics._perturbation import _chunk_size

__all__ = ["max_sensitivity"]

PerturbFunc = Callable[..., TensorOrTuple]


def _explanation_function(explain: Any) -> Callable[..., Any]:
    """``explain.attribute`` for an attribution object, ``explain`` for a callable."""
    if isinstance(explain, type):
        raise TypeError(
            f"explain must be an attribution object (e.g. Saliency(model)) or a callable, "
            f"not the class {explain.__name__}"
        )
    attribute = getattr(explain, "attribute", None)
    if callable(attribute):
        return attribute
    if callable(explain):
        return explain
    raise TypeError(
        "explain must be an attribution object with an `attribute` method or a callable "
        f"explain(inputs, target=...), got {type(explain).__name__}"
    )


def _per_example_target(target: TargetType, batch: int) -> bool:
    """Whether ``target`` holds one entry per example (checked); else it is shared."""
    if isinstance(target, torch.Tensor):
        if target.numel() == 1 and target.dim() <= 1:
            return False
        if target.dim() != 1 or target.shape[0] != batch:
            raise ValueError(
                f"a tensor target must be a scalar or 1-D with one entry per example ({batch}), "
                f"got shape {tuple(target.shape)}"
            )
        return True
    if isinstance(target, list) or (isinstance(target, tuple) and is_score_target(target)):
        if len(target) != batch:
            raise ValueError(
                f"a list target needs one entry per example ({batch}), got {len(target)}"
            )
        return True
    return False


def _rows_of(value: Any, example: torch.Tensor, rows: list[int], batch: int) -> Any:
    """The rows of a per-example target (tensor, list, tuple of callables); else as is."""
    if isinstance(value, torch.Tensor):
        return _tensor_rows(value, example, batch)
    if isinstance(value, (list, tuple)):
        chosen = [value[row] for row in rows]
        return chosen if isinstance(value, list) else tuple(chosen)
    return value


def _tensor_rows(value: Any, example: torch.Tensor, batch: int) -> Any:
    """Captum's rule for extra arguments: a tensor with ``batch`` rows follows its examples."""
    return value[example.to(value.device)] if is_per_example(value, batch) else value


def _flat_maps(maps: Any, rows: int) -> torch.Tensor:
    """The maps of ``rows`` examples flattened and concatenated, ``(rows, D)``."""
    tensors = (maps,) if isinstance(maps, torch.Tensor) else maps
    if not isinstance(tensors, tuple) or not tensors \
            or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(
            f"explain must return a tensor or a tuple of tensors, got {type(maps).__name__}"
        )
    for tensor in tensors:
        if tensor.dim() == 0 or tensor.shape[0] != rows:
            raise ValueError(
                f"explain must return maps with the batch in dim 0 ({rows} examples), "
                f"got shape {tuple(tensor.shape)}"
            )
    flat = torch.cat([t.detach().reshape(rows, -1) for t in tensors], dim=1)
    return flat.to(torch.promote_types(flat.dtype, torch.float32))


def _norm_order(norm_ord: float | str) -> float:
    if norm_ord == "fro":
        return 2.0
    if isinstance(norm_ord, bool) or not isinstance(norm_ord, numbers.Real):
        raise ValueError(f"norm_ord must be 'fro' or a number (the vector norm), got {norm_ord!r}")
    return float(norm_ord)


def _forward_func_of(explain: Any) -> Callable[..., Any] | None:
    """The model behind an attribution object or its bound ``attribute`` method, if any."""
    for owner in (explain, getattr(explain, "__self__", None)):
        forward_func = getattr(owner, "forward_func", None)
        if callable(forward_func):
            return forward_func
    return None


def _predicted_classes(
    forward_func: Callable[..., Any] | None, inputs: tuple[torch.Tensor, ...],
    args: tuple[Any, ...] | None, chunk: int,
) -> TargetType:
    """The class the model predicts (eval mode); ``None`` without a classifier."""
    if forward_func is None:
        return None
    batch = inputs[0].shape[0]
    classes = []
    with preserved_model(find_module(forward_func), eval_mode=True), torch.no_grad():
        for start in range(0, batch, chunk):
            example = torch.arange(start, min(start + chunk, batch), device=inputs[0].device)
            rows = None if args is None else tuple(
                _tensor_rows(arg, example, batch) for arg in args
            )
            output = run_forward(forward_func, tuple(x[example] for x in inputs), rows)
            if output.dim() != 2 or output.shape[1] < 2:
                return None
            classes.append(output.argmax(dim=1))
    return torch.cat(classes)


def _check_sampling(radius: float, n_samples: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) \
            or not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")


def _perturbed_copies(
    inputs: tuple[torch.Tensor, ...], n_samples: int, chunk: int, radius: float,
    perturb_func: PerturbFunc | None, generator: torch.Generator | None,
) -> Iterator[tuple[list[int], torch.Tensor, tuple[torch.Tensor, ...]]]:
    """Chunks ``(rows, example, perturbed)`` of the copies; copy ``i`` is of example ``i // n``."""
    takes_radius = perturb_func is not None and len(
        inspect.signature(perturb_func).parameters
    ) > 1
    batch, device = inputs[0].shape[0], inputs[0].device
    total = batch * n_samples
    for start in range(0, total, chunk):
        rows = [i // n_samples for i in range(start, min(start + chunk, total))]
        example = torch.arange(start, start + len(rows), device=device) // n_samples
        repeated = tuple(x[example] for x in inputs)
        if perturb_func is None:
            yield rows, example, tuple(
                x + torch.empty_like(x).uniform_(-radius, radius, generator=generator)
                for x in repeated
            )
        else:
            form = repeated[0] if len(repeated) == 1 else repeated
            result = perturb_func(form, radius) if takes_radius else perturb_func(form)
            yield rows, example, format_inputs(result)[0]


def max_sensitivity(
    explain: Any,
    inputs: TensorOrTuple,
    target: TargetType = None,
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    norm_ord: float | str = "fro",
    perturb_func: PerturbFunc | None = None,
    internal_batch_size: int | None = None,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Largest relative change of each example's map under ``n_samples`` small perturbations.

    Parameters
    ----------
    explain : attribution object or callable
        Has Captum's ``attribute``, or is ``explain(inputs, target=..., **attribute_kwargs)``.
    inputs, target
        The examples (batch in dim 0; never modified) and any Captum target (``None``:
        the class ``explain.forward_func`` predicts).
    radius, n_samples
        Half-width of the uniform noise and perturbations per example (Captum's
        ``perturb_radius`` and ``n_perturb_samples``).
    norm_ord : "fro" or float
        The norm of the flattened maps (``"fro"`` = 2, else :func:`torch.linalg.vector_norm`).
    perturb_func : callable, optional
        Replaces the noise: ``perturb_func(inputs, radius)`` or ``perturb_func(inputs)``.
    internal_batch_size, additional_forward_args, attribute_kwargs, generator
        Copies explained per call (default 128); passed to ``explain`` (per-example tensors
        follow their copies); the noise's source (on the inputs' device).

    Returns
    -------
    Tensor
        ``(B,)`` sensitivities, float32 (float64 for float64 maps).

    Raises
    ------
    TypeError, ValueError
        An ``explain``, inputs, settings, targets or maps that do not fit.

    Examples
    --------
    >>> from captum_regularized.attr import PositiveSaliency
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> max_sensitivity(PositiveSaliency(model), torch.rand(4, 3, 2, 2), target=0).shape
    torch.Size([4])
    """
    explain_fn = _explanation_function(explain)
    formatted, _ = format_inputs(inputs)
    forward_func = _forward_func_of(explain)
    batch = check_attribution_inputs(formatted, find_module(forward_func or explain))
    _check_sampling(radius, n_samples)
    order = _norm_order(norm_ord)
    chunk = _chunk_size(internal_batch_size)
    device = formatted[0].device
    if batch == 0:
        return torch.zeros(0, device=device)
    args = format_additional_args(additional_forward_args)
    if target is None:
        target = _predicted_classes(forward_func, formatted, args, chunk)
    per_example_target = _per_example_target(target, batch)
    extra_kwargs = dict(attribute_kwargs or {})

    def explain_rows(
        images: tuple[torch.Tensor, ...], example: torch.Tensor, rows: list[int]
    ) -> torch.Tensor:
        """Flat maps of ``images``, copies of the examples ``rows`` (``example`` on device)."""
        kwargs = {key: _tensor_rows(value, example, batch) for key, value in extra_kwargs.items()}
        if args is not None:
            kwargs["additional_forward_args"] = tuple(
                _tensor_rows(arg, example, batch) for arg in args
            )
        chosen = _rows_of(target, example, rows, batch) if per_example_target else target
        form = images[0] if isinstance(inputs, torch.Tensor) else images
        return _flat_maps(explain_fn(form, target=chosen, **kwargs), len(rows))

    clean = torch.cat([
        explain_rows(
            tuple(x[start:start + chunk] for x in formatted),
            torch.arange(start, min(start + chunk, batch), device=device),
            list(range(start, min(start + chunk, batch))),
        )
        for start in range(0, batch, chunk)
    ])
    reference = torch.linalg.vector_norm(clean, ord=order, dim=1)
    reference = torch.where(reference == 0, torch.ones_like(reference), reference)
    pieces = []
    for rows, example, perturbed in _perturbed_copies(
        formatted, n_samples, chunk, radius, perturb_func, generator
    ):
        change = explain_rows(perturbed, example, rows) - clean[example]
        pieces.append(torch.linalg.vector_norm(change, ord=order, dim=1) / reference[example])
    return torch.cat(pieces).view(batch, n_samples).amax(dim=1)
