"""ROAR and DiffROAR: remove the most important pixels, retrain, measure the accuracy.

ROAR (Hooker et al., NeurIPS 2019) replaces the top :math:`k\\,\\%` pixels of each
training and test image, ranked by its map, with an uninformative value, retrains a
fresh model and records its test accuracy :math:`a_{\\text{map}}(k)`; a random
ranking gives :math:`a_{\\text{rand}}(k)`. DiffROAR (Gong, Dou, Farnia, 2024) is the gap

.. math::

    \\mathrm{DiffROAR}(k) = a_{\\text{rand}}(k) - a_{\\text{map}}(k),

higher when the map finds the informative pixels better than chance
(:doc:`/design_notes/metrics`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

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

_FILL_FORMS = "fill must be 'mean', a number or one number per channel"
_LOADER_SETTINGS = (
    "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
    "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
)


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
    >>> RemoveAndRetrain(*[torch.ones(2)] * 4, 0.25, torch.zeros(3)).diff_roar_mean
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
    """``dataset``'s items, pixel ``p`` of image ``i`` filled if ``levels[i, p] <= step``."""

    dataset: Dataset
    levels: torch.Tensor
    step: int
    fill: torch.Tensor
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        removed = (self.levels[index] <= self.step).view(1, *self.size)
        image = torch.where(removed, self.fill.to(item[0].dtype).view(-1, 1, 1), item[0])
        return [image, *item[1:]] if isinstance(item, list) else (image, *item[1:])


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
        loader.dataset, batch_size=loader.batch_size if batched else 64, shuffle=False,
        collate_fn=loader.collate_fn if batched else default_collate,
        num_workers=loader.num_workers,
    )


def _like(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """A loader over ``dataset`` (same length) with ``loader``'s sampling and settings."""
    settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS}
    if loader.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=loader.batch_sampler, **settings)
    return DataLoader(dataset, batch_size=None, sampler=loader.sampler, **settings)


def _removal_steps(ranks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """First step ``j`` with ``rank < counts[j]`` (``len(counts)`` for never), uint8."""
    return torch.searchsorted(counts, ranks, right=True).to(torch.uint8)


def _rank_data(
    loader: DataLoader, name: str, explain: Method, *, counts: torch.Tensor, target: str,
    model: nn.Module | None, device: torch.device, channel_reduction: str,
    attribute_kwargs: dict[str, Any], generator: torch.Generator, shape: tuple[int, ...],
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
        maps = cast(torch.Tensor, method_maps(explain, images, targets, attribute_kwargs))
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
            raise ValueError(f"{_FILL_FORMS}, got {fill!r}")
        return rankings.channel_sum / rankings.pixel_count
    if isinstance(fill, bool):
        raise TypeError(f"{_FILL_FORMS}, not a bool")
    if isinstance(fill, (int, float)):
        values = torch.full((channels,), float(fill), dtype=torch.float64)
    else:
        try:
            values = torch.as_tensor(fill, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{_FILL_FORMS}, got {fill!r}") from error
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
    """The first image, read twice to refuse a data set with a random transform."""
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
    train: Callable[[DataLoader], nn.Module], train_loader: DataLoader,
    test_loader: DataLoader, train_data: _PixelsRemoved, test_data: _PixelsRemoved,
) -> torch.Tensor:
    """Retrain on ``train_data``; which items of ``test_data`` it then classifies right."""
    model = train(_like(train_loader, train_data))
    if not isinstance(model, nn.Module):
        raise TypeError(f"train must return the trained nn.Module, got {type(model).__name__}")
    batch_size = test_loader.batch_size
    return evaluate_correct(
        model, test_data, batch_size=256 if batch_size is None else batch_size,
        collate_fn=None if batch_size is None else test_loader.collate_fn,
    )


def _check_arguments(
    train: object, train_loader: object, test_loader: object, explain: Method,
    fractions: object, target: str, model: nn.Module | None, channel_reduction: str,
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


def _image_shape(train_loader: DataLoader, test_loader: DataLoader) -> tuple[int, ...]:
    first = _first_image(train_loader, "train_loader")
    test_first = _first_image(test_loader, "test_loader")
    if test_first.shape != first.shape:
        raise ValueError(
            "train_loader and test_loader images must have one shape, got "
            f"{tuple(first.shape)} and {tuple(test_first.shape)}"
        )
    return tuple(first.shape)


def _explained_model(
    explain: Method, model: nn.Module | None, device: str | torch.device | None
) -> tuple[nn.Module | None, torch.device]:
    """The model behind the maps and the device its images are explained on."""
    forward_func = getattr(explain, "forward_func", None)
    explained = model if model is not None or forward_func is None else find_module(forward_func)
    if device is not None:
        return explained, torch.device(device)
    return explained, model_device(explained) or torch.device("cpu")


def _retrain_all(
    train: Callable[[DataLoader], nn.Module], loaders: tuple[DataLoader, DataLoader],
    ranks: tuple[_Rankings, _Rankings], fill: torch.Tensor, size: tuple[int, int],
    steps: int, progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, N)`` correctness after retraining without the map's and the random top pixels."""
    correct: list[torch.Tensor] = []
    random_correct: list[torch.Tensor] = []
    with tqdm(total=2 * steps, desc="retraining", disable=not progress, leave=False) as bar:
        for step in range(steps):
            for kind, results in (("levels", correct), ("random_levels", random_correct)):
                train_data, test_data = (
                    _PixelsRemoved(loader.dataset, getattr(rank, kind), step, fill, size)
                    for loader, rank in zip(loaders, ranks)
                )
                results.append(_retrained_correct(train, *loaders, train_data, test_data))
                bar.update(1)
    return torch.stack(correct), torch.stack(random_correct)


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

    ``train`` is called ``2 * len(fractions)`` times; the ``round(k / 100 * H * W)``
    top pixels of each image (ties in raster order) become ``fill``.

    Parameters
    ----------
    train : callable
        ``train(loader) -> model`` trains a *fresh* model on the modified images.
    train_loader, test_loader : DataLoader
        Deterministic map-style data sets of ``(image, label, ...)`` items, floating
        images of one shape ``(C, H, W)``.
    explain : Captum attribution object or callable
        The original model's map, ``explain.attribute(images, target=targets, **kw)``
        or ``explain(images, targets, **kw)`` with ``kw = attribute_kwargs``.
    fractions, fill
        Strictly increasing percentages in ``(0, 100)``; see :data:`Fill`.
    target, model : {"label", "predicted"}, nn.Module
        The class explained: the label, or ``model``'s prediction (``model`` needed).
    channel_reduction : {"max", "sum", "mean"}
        How an input-shaped map becomes one value per pixel.
    seed, device, progress
        Seed of the random rankings; where images are explained (default the model's
        device); tqdm bars.

    Returns
    -------
    RemoveAndRetrain

    Raises
    ------
    TypeError, ValueError
        Arguments, loaders, batches or a ``train`` result that do not fit.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> data = DataLoader(TensorDataset(torch.rand(8, 1, 4, 4), torch.arange(8) % 2))
    >>> def train(loader):  # a real recipe trains; :doc:`/design_notes/metrics` has one
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    >>> result = remove_and_retrain(train, data, data, lambda x, t: x, (10, 50), progress=False)
    >>> result.accuracy.shape, result.correct.shape
    (torch.Size([2]), torch.Size([2, 8]))
    """
    values = _check_arguments(
        train, train_loader, test_loader, explain, fractions, target, model, channel_reduction,
        seed,
    )
    shape = _image_shape(train_loader, test_loader)
    pixels = shape[1] * shape[2]
    counts = torch.tensor([math.floor(value / 100 * pixels + 0.5) for value in values])
    explained, where = _explained_model(explain, model, device)
    shared: dict[str, Any] = dict(
        counts=counts, target=target, model=model, device=where,
        channel_reduction=channel_reduction, attribute_kwargs=dict(attribute_kwargs or {}),
        generator=torch.Generator().manual_seed(seed), shape=shape, progress=progress,
    )
    with preserved_model(explained, eval_mode=True):
        train_ranks = _rank_data(train_loader, "train_loader", explain, **shared)
        test_ranks = _rank_data(test_loader, "test_loader", explain, **shared)
    fill_values = _fill_values(fill, train_ranks)
    map_correct, chance_correct = _retrain_all(
        train, (train_loader, test_loader), (train_ranks, test_ranks), fill_values,
        (shape[1], shape[2]), len(values), progress,
    )
    map_accuracy = map_correct.double().mean(1)
    chance_accuracy = chance_correct.double().mean(1)
    diff = chance_accuracy - map_accuracy
    return RemoveAndRetrain(
        torch.tensor(values, dtype=torch.float64), map_accuracy, chance_accuracy, diff,
        float(diff.mean()), fill_values, map_correct, chance_correct,
    )
