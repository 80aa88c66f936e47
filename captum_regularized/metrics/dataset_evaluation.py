"""Score an attribution method over a whole data set, on one process or many.

:func:`evaluate_dataset` explains every batch of a ``DataLoader`` with the method and
returns the metrics' means and per-example values; under ``torch.distributed`` every
rank returns what one process would (:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from captum_regularized._internal.checks import check_class_scores, check_data_batch
from captum_regularized._internal.method_maps import Method, method_maps
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import model_device, preserved_model
from captum_regularized.metrics.allegiance import allegiance_deletion_auc
from captum_regularized.metrics.confidence_change import ConfidenceChange, confidence_change
from captum_regularized.metrics.deletion_insertion import deletion_auc, insertion_auc
from captum_regularized.metrics.gradient_alignment import gradient_alignment
from captum_regularized.metrics.pointing_game import energy_pointing_game, pointing_game
from captum_regularized.metrics.sparseness import gini_sparseness

__all__ = ["BUILTIN_METRICS", "DatasetEvaluation", "MetricBatch", "evaluate_dataset",
           "resolve_metrics"]


@dataclass(frozen=True)
class MetricBatch:
    """Everything a metric may need about one batch (all on the model's device).

    ``model`` (in eval mode), ``inputs`` ``(B, C, H, W)``, the explained ``targets`` and
    the data set's ``labels`` ``(B,)``, the method's ``attributions`` (``None`` without
    a method) and the ground-truth ``masks`` (``None`` without them).

    Examples
    --------
    >>> batch = MetricBatch(None, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]),
    ...                     torch.tensor([0, 1, 1]), None, None)
    >>> (batch.targets == batch.labels).float().tolist()
    [1.0, 1.0, 0.0]
    """

    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    attributions: torch.Tensor | None
    masks: torch.Tensor | None
    _confidence: dict[str, ConfidenceChange] = field(
        default_factory=dict, repr=False, compare=False
    )

    def confidence(self, metric: str) -> ConfidenceChange:
        """:func:`confidence_change` of this batch, computed once for AD, AG and IC."""
        if "value" not in self._confidence:
            self._confidence["value"] = confidence_change(
                self.model, self.inputs, self.maps(metric), self.targets
            )
        return self._confidence["value"]

    def maps(self, metric: str) -> torch.Tensor:
        """The attributions, or a ``ValueError`` naming ``metric`` when there are none."""
        if self.attributions is None:
            raise ValueError(f"metric {metric!r} needs attribution maps; pass a method")
        return self.attributions

    def ground_truth(self, metric: str) -> torch.Tensor:
        """The masks, or a ``ValueError`` naming ``metric`` when the data set has none."""
        if self.masks is None:
            raise ValueError(
                f"metric {metric!r} needs ground-truth masks; the data set must yield "
                "(image, label, mask) items"
            )
        return self.masks


MetricFn = Callable[[MetricBatch], torch.Tensor]
"""A per-example metric: ``metric(batch) -> (B,)`` values."""

BUILTIN_METRICS: dict[str, MetricFn] = {
    "deletion_auc": lambda b: deletion_auc(b.model, b.inputs, b.maps("deletion_auc"), b.targets),
    "insertion_auc": lambda b: insertion_auc(b.model, b.inputs, b.maps("insertion_auc"), b.targets),
    "average_drop": lambda b: b.confidence("average_drop").drop,
    "average_gain": lambda b: b.confidence("average_gain").gain,
    "increase_in_confidence": lambda b: b.confidence("increase_in_confidence").increase,
    "allegiance_deletion_auc": lambda b: allegiance_deletion_auc(
        b.model, b.inputs, b.maps("allegiance_deletion_auc")
    ).per_example_auc,
    "gini_sparseness": lambda b: gini_sparseness(b.maps("gini_sparseness")),
    "pointing_game": lambda b: pointing_game(
        b.maps("pointing_game"), b.ground_truth("pointing_game")
    ),
    "energy_pointing_game": lambda b: energy_pointing_game(
        b.maps("energy_pointing_game"), b.ground_truth("energy_pointing_game")
    ),
    "gradient_alignment": lambda b: gradient_alignment(b.model, b.inputs, b.targets),
}
"""Metrics by name, with their default settings."""

@dataclass
class DatasetEvaluation:
    """Means (``{name: float}``) and per-example values (``{name: (N,) CPU tensor}``,
    in data-set order) of every metric.

    Examples
    --------
    >>> DatasetEvaluation({"gini": 0.5}, {"gini": torch.tensor([0.25, 0.75])}).means
    {'gini': 0.5}
    """

    means: dict[str, float]
    per_example: dict[str, torch.Tensor]


def resolve_metrics(metrics: Sequence[str] | Mapping[str, MetricFn | str]) -> dict[str, MetricFn]:
    """The metrics to compute, by name, from names or a ``{name: metric}`` mapping.

    A name of :data:`BUILTIN_METRICS` stands for that metric, a callable
    ``metric(MetricBatch) -> (B,)`` for itself.

    Raises
    ------
    TypeError, ValueError
        For one string, a metric neither a name nor a callable, an unknown name, or none.

    Examples
    --------
    >>> chosen = resolve_metrics({"gini": "gini_sparseness", "ones": lambda b: b.targets * 0 + 1})
    >>> list(chosen), chosen["gini"] is BUILTIN_METRICS["gini_sparseness"]
    (['gini', 'ones'], True)
    """
    if isinstance(metrics, str):
        raise TypeError("metrics must be a sequence of names or a mapping, not one string")
    items = metrics.items() if isinstance(metrics, Mapping) else [(m, m) for m in metrics]
    resolved: dict[str, MetricFn] = {}
    for name, metric in items:
        if isinstance(metric, str):
            if metric not in BUILTIN_METRICS:
                raise ValueError(
                    f"unknown metric {metric!r}; built-in metrics are {sorted(BUILTIN_METRICS)}"
                )
            metric = BUILTIN_METRICS[metric]
        if not callable(metric):
            raise TypeError(f"metric {name!r} must be a name or a callable, got {metric!r}")
        resolved[name] = metric
    if not resolved:
        raise ValueError("metrics must name at least one metric")
    return resolved


def _world(distributed: bool | None) -> tuple[int, int] | None:
    """``(rank, world_size)`` when the evaluation is to be sharded, else ``None``."""
    initialised = dist.is_available() and dist.is_initialized()
    if distributed and not initialised:
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    if distributed is False or not initialised or dist.get_world_size() == 1:
        return None
    return dist.get_rank(), dist.get_world_size()


def _sharded(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(
            "distributed evaluation reshards the loader with a DistributedSampler; it needs a "
            "map-style data set and a loader built with batch_size"
        )
    sampler: DistributedSampler = DistributedSampler(
        loader.dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
    )
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
    )


def _gather_in_dataset_order(values: torch.Tensor, total: int, world_size: int) -> torch.Tensor:
    """All-gather equal-length shards and undo the sampler's interleaving and padding."""
    if dist.get_backend() == "gloo":
        values = values.cpu()
    shards = [torch.empty_like(values) for _ in range(world_size)]
    dist.all_gather(shards, values.contiguous())
    return torch.stack(shards, dim=1).reshape(-1, *values.shape[1:])[:total]


def _explained_batch(
    model: nn.Module,
    batch: Any,
    index: int,
    device: torch.device | None,
    target: str,
    method: Method,
    kwargs: dict[str, Any],
) -> MetricBatch:
    """One batch of the loader, checked, on ``device``, with its targets and maps."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("data must yield (images, labels) or (images, labels, masks) batches")
    images, labels = batch[0].to(device), batch[1].to(device)
    check_data_batch(images, index, "evaluate_dataset")
    has_masks = len(batch) > 2 and isinstance(batch[2], torch.Tensor)
    masks = batch[2].to(device) if has_masks else None
    if target == "predicted":
        with torch.no_grad():
            output = logits_of(model(images), "model")
            scores = check_class_scores(output, batch=len(images), who="model")
            targets = scores.argmax(dim=1)
    else:
        targets = labels.long()
    maps = method_maps(method, images, targets, kwargs)
    return MetricBatch(model, images, targets, labels, maps, masks)


def evaluate_dataset(
    model: nn.Module,
    data: DataLoader,
    method: Method,
    metrics: Sequence[str] | Mapping[str, MetricFn | str] = ("deletion_auc", "insertion_auc"),
    *,
    target: Literal["predicted", "label"] = "predicted",
    attribute_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    distributed: bool | None = None,
) -> DatasetEvaluation:
    """Means and per-example values of ``metrics`` for ``method`` over ``data``.

    Parameters
    ----------
    model : nn.Module
        The classifier; evaluated in eval mode (its modes are restored afterwards).
    data : DataLoader
        Yields ``(images, labels)`` or ``(images, labels, masks)`` batches.
    method : Captum attribution object, callable or None
        ``method.attribute(images, target=targets, **attribute_kwargs)`` or
        ``method(images, targets, **attribute_kwargs)``; ``None`` when no metric needs maps.
    metrics : sequence of names or mapping
        As :func:`resolve_metrics` reads it (a callable may change a metric's settings,
        e.g. ``lambda b: deletion_auc(b.model, b.inputs, b.attributions, b.targets, steps=20)``).
    target : {"predicted", "label"}
        Explain (and score) the predicted class or the data set's label.
    attribute_kwargs, device, progress
        Extra keyword arguments for the method; where batches go (default the model's
        device); whether to show a tqdm bar (on rank 0 only).
    distributed : bool, optional
        ``None``: shard when a process group of several ranks is initialised;
        ``True``: require one; ``False``: never shard.

    Returns
    -------
    DatasetEvaluation
        The same on every rank.

    Raises
    ------
    TypeError, ValueError
        For a loader, batch, metric or model output that does not fit, or no data.

    Examples
    --------
    >>> from captum.attr import Saliency
    >>> from torch.utils.data import TensorDataset
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> data = DataLoader(TensorDataset(torch.rand(5, 3, 8, 8), torch.arange(5)), batch_size=2)
    >>> result = evaluate_dataset(model, data, Saliency(model), ["gini_sparseness"], progress=False)
    >>> result.per_example["gini_sparseness"].shape
    torch.Size([5])
    """
    if not isinstance(data, DataLoader):
        raise TypeError(f"data must be a torch.utils.data.DataLoader, got {type(data).__name__}")
    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
    chosen = resolve_metrics(metrics)
    kwargs = dict(attribute_kwargs or {})
    device = torch.device(device) if device is not None else model_device(model)
    world = _world(distributed)
    loader = data if world is None else _sharded(data, *world)
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in chosen}
    with preserved_model(model, eval_mode=True):
        show = progress and (world is None or world[0] == 0)
        bar = tqdm(loader, desc="evaluating", disable=not show, leave=False)
        for index, batch in enumerate(bar):
            context = _explained_batch(model, batch, index, device, target, method, kwargs)
            for name, metric in chosen.items():
                pieces[name].append(metric(context).detach().reshape(len(context.inputs)))
    per_example: dict[str, torch.Tensor] = {}
    for name, values in pieces.items():
        joined = torch.cat(values) if values else torch.zeros(0, device=device)
        if world is not None:
            total = len(data.dataset)  # type: ignore[arg-type]
            joined = _gather_in_dataset_order(joined, total, world[1])
        per_example[name] = joined.cpu()
    if any(len(values) == 0 for values in per_example.values()):
        raise ValueError("evaluate_dataset got an empty data set")
    means = {name: float(values.double().mean()) for name, values in per_example.items()}
    return DatasetEvaluation(means, per_example)
