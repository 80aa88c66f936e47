"""ROAR and DiffROAR: remove the most important pixels, retrain, measure the accuracy.

ROAR (Hooker et al., NeurIPS 2019) replaces the top :math:`k\\,\\%` pixels of every
training and test image, ranked by that image's map, by an uninformative value,
retrains a fresh model with the same recipe and records its test accuracy
:math:`a_{\\text{map}}(k)`; the same with a random ranking gives
:math:`a_{\\text{rand}}(k)`. DiffROAR (Gong, Dou, Farnia, 2024) is the gap

.. math::

    \\mathrm{DiffROAR}(k) = a_{\\text{rand}}(k) - a_{\\text{map}}(k),

higher when the map finds the informative pixels better than chance. How the data
sets are wrapped and ranked: :doc:`/design_notes/metrics`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from tqdm.auto import tqdm

from captum_regularized._internal.checks import check_class_scores, check_data_batch
from captum_regularized._internal.method_maps import Method, method_maps
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import find_module, model_device, preserved_model
from captum_regularized._internal.pixel_maps import CHANNEL_REDUCTIONS, per_pixel_map
from captum_regularized.metrics._perturbation import pixel_ranks
from captum_regularized.models.training import evaluate_correct

__all__ = ["ROAR_FRACTIONS", "RemoveAndRetrain", "remove_and_retrain"]

ROAR_FRACTIONS = (10.0, 30.0, 50.0, 70.0, 90.0)
"""The percentages of pixels removed by Hooker et al."""

Fill = str | float | Sequence[float] | torch.Tensor
"""``"mean"`` (per-channel training-set mean), one number, or one number per channel."""


@dataclass(frozen=True)
class RemoveAndRetrain:
    """Test accuracy of models retrained without the top-ranked pixels, by fraction.

    ``accuracy`` and ``random_accuracy`` ``(K,)`` come from the map's and a random
    ranking at the ``fractions``; ``diff_roar = random_accuracy - accuracy`` and its
    mean; ``fill`` ``(C,)`` replaced the removed pixels; ``correct`` and
    ``random_correct`` ``(K, N)`` say whether each retrained model classifies test item
    ``i`` (index order, pixels removed) as its label. CPU tensors.

    Examples
    --------
    >>> result = RemoveAndRetrain(torch.tensor([10.0, 50.0]), torch.tensor([0.8, 0.4]),
    ...                           torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.4]), 0.25,
    ...                           torch.zeros(3))
    >>> result.diff_roar_mean
    0.25
    """

    fractions: torch.Tensor
    accuracy: torch.Tensor
    random_accuracy: torch.Tensor
    diff_roar: torch.Tensor
    diff_roar_mean: float
    fill: torch.Tensor
    correct: torch.Tensor | None = None
    random_correct: torch.Tensor | None = None


@dataclass(eq=False)
class _PixelsRemoved(Dataset):
    """The items of ``dataset`` with the pixels removed before step ``step`` replaced.

    ``levels[i, p]`` is the step at which pixel ``p`` of item ``i`` goes (see
    :func:`_removal_steps`); the image is the first element of the item.
    """

    dataset: Dataset
    levels: torch.Tensor
    step: int
    fill: torch.Tensor
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        image = item[0]
        removed = (self.levels[index] <= self.step).view(1, *self.size)
        image = torch.where(removed, self.fill.to(image.dtype).view(-1, 1, 1), image)
        rest = list(item[1:])
        return [image, *rest] if isinstance(item, list) else (image, *rest)


@dataclass
class _Rankings:
    """What one pass over a data set keeps: removal steps and the channel sums."""

    levels: torch.Tensor
    random_levels: torch.Tensor
    channel_sum: torch.Tensor
    pixel_count: int


def _check_loader(loader: object, name: str) -> None:
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{name} must be a torch.utils.data.DataLoader, got {type(loader).__name__}"
        )
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            f"{name} must hold a map-style data set (with __getitem__ and __len__): the "
            "removal is stored per item index"
        )
    try:
        size = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}.dataset must have a length") from None
    if size == 0:
        raise ValueError(f"{name} is empty; remove_and_retrain needs at least one item")


def _check_fractions(fractions: object) -> tuple[float, ...]:
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence):
        raise TypeError(f"fractions must be a sequence of percentages, got {fractions!r}")
    values = []
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"fractions must hold numbers, got {value!r}")
        if not (math.isfinite(value) and 0 < value < 100):
            raise ValueError(
                f"fractions are percentages of pixels strictly between 0 and 100, got {value!r}"
            )
        values.append(float(value))
    if not values:
        raise ValueError("fractions must hold at least one percentage")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"fractions must be strictly increasing, got {tuple(values)}")
    if len(values) > 255:
        raise ValueError(f"fractions may hold at most 255 percentages, got {len(values)}")
    return tuple(values)


def _images_labels(batch: Any, index: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"{name} must yield (images, labels, ...) batches, got "
                        f"{type(batch).__name__}")
    images, labels = batch[0], batch[1]
    check_data_batch(images, index, "remove_and_retrain")
    if images.dim() != 4:
        raise ValueError(
            f"remove_and_retrain: {name} batch {index} images must be (batch, channels, "
            f"height, width), got shape {tuple(images.shape)}"
        )
    return images, labels


def _in_order(loader: DataLoader) -> DataLoader:
    """The loader's data set, item by item in index order (batched as the loader does)."""
    batched = loader.batch_size is not None
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size if batched else 64,
        shuffle=False,
        collate_fn=loader.collate_fn if batched else default_collate,
        num_workers=loader.num_workers,
    )


def _like(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """A loader over ``dataset`` (same length) with ``loader``'s sampling and settings."""
    settings: dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )
    if loader.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=loader.batch_sampler, **settings)
    return DataLoader(dataset, batch_size=None, sampler=loader.sampler, **settings)


def _removal_steps(ranks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """First step ``j`` with ``rank < counts[j]`` (``len(counts)`` for never), uint8.

    Examples
    --------
    >>> _removal_steps(torch.tensor([[0, 1, 2, 3]]), torch.tensor([1, 3])).tolist()
    [[0, 1, 1, 2]]
    """
    return torch.searchsorted(counts, ranks, right=True).to(torch.uint8)


def _rank_data(
    loader: DataLoader,
    name: str,
    explain: Method,
    *,
    counts: torch.Tensor,
    target: str,
    model: nn.Module | None,
    device: torch.device,
    channel_reduction: str,
    attribute_kwargs: dict[str, Any],
    generator: torch.Generator,
    shape: tuple[int, ...],
    progress: bool,
) -> _Rankings:
    """One pass over ``loader``'s data set in index order: maps, random ranks, sums."""
    levels, random_levels = [], []
    channel_sum: torch.Tensor | None = None
    pixel_count = 0
    bar = tqdm(_in_order(loader), desc=f"ranking {name}", disable=not progress, leave=False)
    for index, batch in enumerate(bar):
        images, labels = _images_labels(batch, index, name)
        if tuple(images.shape[1:]) != shape:
            raise ValueError(
                f"remove_and_retrain: all images must share one shape (channels, height, "
                f"width); {name} batch {index} has {tuple(images.shape[1:])}, not {shape}"
            )
        images = images.to(device)
        if target == "predicted":
            with torch.no_grad():
                output = logits_of(model(images), "model")  # type: ignore[misc]
            targets = check_class_scores(output, batch=len(images), who="model").argmax(1)
        else:
            targets = labels.to(device).long()
        maps = method_maps(explain, images, targets, attribute_kwargs)
        if maps is None:
            raise TypeError("explain must be a Captum attribution object or a callable")
        pixel = per_pixel_map(
            maps, len(images), (images.shape[2], images.shape[3]),
            channel_reduction=channel_reduction, device=images.device, name="the maps",
        )
        levels.append(_removal_steps(pixel_ranks(pixel).cpu(), counts))
        noise = torch.rand(len(images), images.shape[2] * images.shape[3], generator=generator)
        random_levels.append(_removal_steps(pixel_ranks(noise), counts))
        sums = images.detach().double().sum(dim=(0, 2, 3)).cpu()
        channel_sum = sums if channel_sum is None else channel_sum + sums
        pixel_count += len(images) * images.shape[2] * images.shape[3]
    if channel_sum is None:
        raise ValueError(f"{name} yielded no batch")
    return _Rankings(torch.cat(levels), torch.cat(random_levels), channel_sum, pixel_count)


def _fill_values(fill: Fill, rankings: _Rankings) -> torch.Tensor:
    channels = rankings.channel_sum.numel()
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be 'mean', a number or one number per channel, "
                             f"got {fill!r}")
        return rankings.channel_sum / rankings.pixel_count
    if isinstance(fill, bool):
        raise TypeError("fill must be 'mean', a number or one number per channel, not a bool")
    if isinstance(fill, (int, float)):
        values = torch.full((channels,), float(fill), dtype=torch.float64)
    else:
        try:
            values = torch.as_tensor(fill, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"fill must be 'mean', a number or one number per channel, got {fill!r}"
            ) from error
        if values.numel() == 1:
            values = values.expand(channels).clone()
        if values.numel() != channels:
            raise ValueError(
                f"fill must hold one value per channel ({channels}), got {values.numel()}"
            )
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"fill must be finite, got {fill!r}")
    return values


def _first_image(loader: DataLoader, name: str) -> torch.Tensor:
    """The first image of the data set, read twice: a data set whose image changes between
    reads (a random transform) is refused."""
    first, again = loader.dataset[0], loader.dataset[0]  # type: ignore[index]
    if not isinstance(first, (tuple, list)) or not isinstance(first[0], torch.Tensor):
        raise TypeError(f"{name}.dataset must yield (image tensor, label, ...) items")
    if first[0].dim() != 3:
        raise ValueError(
            f"{name}.dataset images must be (channels, height, width), got shape "
            f"{tuple(first[0].shape)}"
        )
    if not torch.equal(first[0], again[0]):
        raise ValueError(
            f"{name}.dataset returns a different image each time it is read (a random "
            "transform?): the removal is computed once per item, so the data sets must be "
            "deterministic"
        )
    return first[0]


def _retrained_correct(
    train: Callable[[DataLoader], nn.Module],
    train_loader: DataLoader,
    test_loader: DataLoader,
    train_data: _PixelsRemoved,
    test_data: _PixelsRemoved,
) -> torch.Tensor:
    """Retrain on ``train_data``; ``(N,)`` bool on the CPU: which items of ``test_data``,
    in index order, the model classifies as their label (:func:`evaluate_correct`,
    batched and collated as ``test_loader``)."""
    model = train(_like(train_loader, train_data))
    if not isinstance(model, nn.Module):
        raise TypeError(f"train must return the trained nn.Module, got {type(model).__name__}")
    batch_size = test_loader.batch_size
    return evaluate_correct(
        model, test_data, batch_size=256 if batch_size is None else batch_size,
        collate_fn=None if batch_size is None else test_loader.collate_fn,
    )


def _check_arguments(
    train: object,
    train_loader: object,
    test_loader: object,
    explain: Method,
    fractions: object,
    target: str,
    model: nn.Module | None,
    channel_reduction: str,
    seed: object,
) -> tuple[float, ...]:
    """The checks of :func:`remove_and_retrain`'s arguments; returns the fractions."""
    if not callable(train):
        raise TypeError(f"train must be a callable train(loader) -> model, got {train!r}")
    _check_loader(train_loader, "train_loader")
    _check_loader(test_loader, "test_loader")
    values = _check_fractions(fractions)
    if explain is None or not (hasattr(explain, "attribute") or callable(explain)):
        raise TypeError(
            "explain must be a Captum attribution object or a callable explain(inputs, "
            f"targets), got {type(explain).__name__}"
        )
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    if target == "predicted" and model is None:
        raise ValueError("target='predicted' needs the original model: pass model=")
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(
            f"channel_reduction must be one of {list(CHANNEL_REDUCTIONS)}, "
            f"got {channel_reduction!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return values


def remove_and_retrain(
    train: Callable[[DataLoader], nn.Module],
    train_loader: DataLoader,
    test_loader: DataLoader,
    explain: Method,
    fractions: Sequence[float] = ROAR_FRACTIONS,
    *,
    fill: Fill = "mean",
    target: Literal["label", "predicted"] = "label",
    model: nn.Module | None = None,
    channel_reduction: str = "max",
    seed: int = 0,
    device: str | torch.device | None = None,
    attribute_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> RemoveAndRetrain:
    """ROAR accuracies for a map and for a random ranking, and DiffROAR, by fraction.

    For each ``k`` the ``round(k / 100 * H * W)`` pixels of every training and test
    image that rank highest in its map (all channels; ties in raster order) become
    ``fill``; ``train`` retrains a fresh model on the modified training set and its
    accuracy on the modified test set is recorded, and the same with one seeded random
    ranking per image: ``2 * len(fractions)`` calls of ``train``.

    Parameters
    ----------
    train : callable
        ``train(loader) -> model``: trains a *fresh* model on ``loader`` (the caller's
        ``train_loader`` over the modified images) and returns it.
    train_loader, test_loader : DataLoader
        Deterministic map-style data sets of ``(image, label, ...)`` items with
        floating images of one shape ``(C, H, W)``.
    explain : Captum attribution object or callable
        The original model's map, ``explain.attribute(images, target=targets,
        **attribute_kwargs)`` or ``explain(images, targets, **attribute_kwargs)``.
    fractions : sequence of float
        Strictly increasing percentages in ``(0, 100)``.
    fill : "mean", float or sequence of float
        ``"mean"`` (the training images' per-channel mean), one number or one per channel.
    target : {"label", "predicted"}
        The class each map explains: the label, or ``model``'s prediction.
    model : nn.Module, optional
        The original model, needed for ``target="predicted"``.
    channel_reduction : {"max", "sum", "mean"}
        How an input-shaped map becomes one value per pixel.
    seed : int
        Seeds the random rankings (a CPU generator).
    device, attribute_kwargs, progress
        Where images are explained (default the model's device), extra keyword
        arguments of ``explain``, tqdm bars.

    Returns
    -------
    RemoveAndRetrain

    Raises
    ------
    TypeError, ValueError
        For arguments, loaders, batches or a ``train`` result that do not fit.

    Examples
    --------
    A nearest-class-mean "training" keeps the example fast; any ``train`` works.

    >>> from torch.utils.data import TensorDataset
    >>> class NearestMean(nn.Module):
    ...     def __init__(self, means):
    ...         super().__init__()
    ...         self.means = means
    ...     def forward(self, x):
    ...         return -torch.cdist(x.flatten(1), self.means)
    >>> def train(loader):
    ...     x, y = map(torch.cat, zip(*loader))
    ...     return NearestMean(torch.stack([x[y == c].flatten(1).mean(0) for c in (0, 1)]))
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(40) % 2
    >>> images = torch.rand(40, 1, 4, 4, generator=g)
    >>> images[:, 0, 0, 0] += 2.0 * labels  # the class is in the top-left pixel
    >>> data = DataLoader(TensorDataset(images, labels), batch_size=8)
    >>> def explain(x, t):  # a map that points at the informative pixel
    ...     maps = torch.zeros_like(x)
    ...     maps[:, :, 0, 0] = 1.0
    ...     return maps
    >>> result = remove_and_retrain(train, data, data, explain, fractions=(10, 50),
    ...                             progress=False)
    >>> result.fractions.tolist(), bool(result.diff_roar_mean > 0)
    ([10.0, 50.0], True)
    >>> bool((result.correct.double().mean(1) == result.accuracy).all())
    True
    """
    values = _check_arguments(
        train, train_loader, test_loader, explain, fractions, target, model, channel_reduction,
        seed,
    )
    first = _first_image(train_loader, "train_loader")
    test_first = _first_image(test_loader, "test_loader")
    if test_first.shape != first.shape:
        raise ValueError(
            "train_loader and test_loader images must have one shape, got "
            f"{tuple(first.shape)} and {tuple(test_first.shape)}"
        )
    size = (first.shape[1], first.shape[2])
    pixels = size[0] * size[1]
    counts = torch.tensor([math.floor(value / 100 * pixels + 0.5) for value in values])
    forward_func = getattr(explain, "forward_func", None)
    explained = model if model is not None or forward_func is None else find_module(forward_func)
    if device is not None:
        where = torch.device(device)
    else:
        where = model_device(explained) or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    shared: dict[str, Any] = dict(
        target=target, model=model, device=where, channel_reduction=channel_reduction,
        attribute_kwargs=dict(attribute_kwargs or {}), generator=generator,
        shape=tuple(first.shape), progress=progress,
    )
    with preserved_model(explained, eval_mode=True):
        train_ranks = _rank_data(train_loader, "train_loader", explain, counts=counts, **shared)
        test_ranks = _rank_data(test_loader, "test_loader", explain, counts=counts, **shared)
    fill_values = _fill_values(fill, train_ranks)
    correct: list[torch.Tensor] = []
    random_correct: list[torch.Tensor] = []
    bar = tqdm(total=2 * len(values), desc="retraining", disable=not progress, leave=False)
    with bar:
        for step in range(len(values)):
            for kind, results in (("levels", correct), ("random_levels", random_correct)):
                train_data = _PixelsRemoved(
                    train_loader.dataset, getattr(train_ranks, kind), step, fill_values, size
                )
                test_data = _PixelsRemoved(
                    test_loader.dataset, getattr(test_ranks, kind), step, fill_values, size
                )
                results.append(_retrained_correct(
                    train, train_loader, test_loader, train_data, test_data
                ))
                bar.update(1)
    map_correct = torch.stack(correct)
    chance_correct = torch.stack(random_correct)
    map_accuracy = map_correct.double().mean(1)
    chance_accuracy = chance_correct.double().mean(1)
    diff = chance_accuracy - map_accuracy
    return RemoveAndRetrain(
        fractions=torch.tensor(values, dtype=torch.float64),
        accuracy=map_accuracy,
        random_accuracy=chance_accuracy,
        diff_roar=diff,
        diff_roar_mean=float(diff.mean()),
        fill=fill_values,
        correct=map_correct,
        random_correct=chance_correct,
    )
