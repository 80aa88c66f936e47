"""ROAR and DiffROAR: remove the most important pixels, retrain, measure the accuracy.

ROAR (Hooker, Erhan, Kindermans, Kim, "A benchmark for interpretability methods in deep
neural networks", NeurIPS 2019) asks whether the pixels a map ranks highest carry the
information the task needs. For every fraction :math:`k` the top :math:`k\\,\\%` pixels of
each image, by that image's map, are replaced by an uninformative value in the training
*and* the test set; a fresh model is trained on the modified training set with the same
recipe and its test accuracy :math:`a_{\\text{map}}(k)` recorded. Retraining is what
separates "the information is gone" from "the model has never seen such images". The
same is done with a random ranking of the pixels, :math:`a_{\\text{rand}}(k)`.

DiffROAR (Gong, Dou, Farnia, "Structured gradient-based interpretations via
norm-regularized adversarial training", 2024) is the gap

.. math::

    \\mathrm{DiffROAR}(k) = a_{\\text{rand}}(k) - a_{\\text{map}}(k),
    \\qquad \\overline{\\mathrm{DiffROAR}} = \\frac{1}{|K|}\\sum_{k \\in K}
    \\mathrm{DiffROAR}(k):

higher means the map finds the informative pixels better than chance.

The maps are computed once per image, with the caller's attribution method, for the
original model; the ranking of every pixel is kept (one byte per pixel), and the
modified images are made on the fly by a wrapper of the caller's data sets, which are
never modified. Training is the caller's: ``train(loader) -> model`` receives a
``DataLoader`` that is the caller's training loader (same sampler, batch size, workers,
collate function) over the modified images, so it runs on any device and with any
recipe. The retrained models' verdict on every test item is kept too (``correct``,
``random_correct``), for paired per-example comparisons between maps.
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

    Attributes
    ----------
    fractions : Tensor
        ``(K,)`` percentages of pixels removed, in the order given.
    accuracy : Tensor
        ``(K,)`` test accuracy when pixels are removed in the map's order.
    random_accuracy : Tensor
        ``(K,)`` test accuracy when they are removed in a random (seeded) order.
    diff_roar : Tensor
        ``(K,)``: ``random_accuracy - accuracy`` (higher: a more informative map).
    diff_roar_mean : float
        Mean of ``diff_roar`` over the fractions.
    fill : Tensor
        ``(C,)``: the value that replaced removed pixels, per channel.
    correct : Tensor or None
        ``(K, N)`` bool, ``N`` the length of the test data set: ``correct[k, i]`` is True
        when the model retrained with the map's removal at ``fractions[k]`` classifies
        test item ``i`` (the data set's index order, with that item's pixels removed) as
        its label, so ``accuracy[k] == correct[k].double().mean()``. Paired per-example
        values, for comparing maps item by item. None when not given (it is last and
        optional, so older positional constructions still work).
    random_correct : Tensor or None
        ``(K, N)`` bool: the same for the random ranking (``random_accuracy``).

    All tensors are on the CPU; ``correct`` and ``random_correct`` are bool, the others
    float64.

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


class _PixelsRemoved(Dataset):
    """The items of ``dataset`` with the pixels ranked before step ``step`` replaced.

    ``levels[i, p]`` is the first step at which pixel ``p`` of item ``i`` is removed
    (the number of steps when never); the image is the first element of the item.
    """

    def __init__(
        self, dataset: Dataset, levels: torch.Tensor, step: int, fill: torch.Tensor,
        size: tuple[int, int],
    ) -> None:
        self.dataset = dataset
        self.levels = levels
        self.step = step
        self.fill = fill
        self.size = size

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


def _check_loader(loader: object, name: str) -> DataLoader:
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
    return loader


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
    """First step at which each ranked pixel is removed (``len(counts)`` for never), uint8.

    A pixel of rank ``r`` (0 = highest) is removed at step ``j`` when ``r < counts[j]``.

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

    For each ``k`` in ``fractions`` the ``k / 100 * H * W`` pixels (rounded, halves up) of every
    training and test image that rank highest in its map (all channels of a pixel
    together; ties in raster order) are replaced by ``fill``; ``train`` retrains a fresh
    model on the modified training set and its accuracy on the modified test set is
    recorded. The same with a random ranking (one seeded permutation per image) gives
    the baseline. That is ``2 * len(fractions)`` calls of ``train``.

    Parameters
    ----------
    train : callable
        ``train(loader) -> model``: trains a *fresh* model, with the recipe of the model
        being explained, on the batches of ``loader`` and returns it (an ``nn.Module``
        returning ``(batch, classes)`` scores, on any device). Seed it inside for
        reproducible numbers. ``loader`` is ``train_loader`` (same sampler, batch size,
        workers, collate function) over the modified images.
    train_loader, test_loader : DataLoader
        Map-style data sets of ``(image, label, ...)`` items with floating images of one
        shape ``(C, H, W)`` and class labels; deterministic (augmentations that change
        every read would not match the stored removal, so the first item is read twice
        and a difference refused). Never modified.
    explain : Captum attribution object or callable
        The map of the original model: ``explain.attribute(images, target=targets,
        **attribute_kwargs)`` or ``explain(images, targets, **attribute_kwargs)``, run
        once per image. Maps of shape ``(B, C, H, W)``, ``(B, 1, h, w)`` or
        ``(B, h, w)`` (lower resolutions are resized bilinearly).
    fractions : sequence of float
        Percentages of pixels removed, strictly increasing, each in ``(0, 100)``.
        Default :data:`ROAR_FRACTIONS` (10, 30, 50, 70, 90), Hooker et al.'s.
    fill : "mean", float or sequence of float
        What removed pixels become: ``"mean"`` (default, as in Hooker et al.) is the
        per-channel mean of the training images, used for train and test images alike;
        or one number, or one number per channel.
    target : {"label", "predicted"}
        The class each map explains: the data set's label, or the class ``model``
        predicts (then ``model`` is required).
    model : nn.Module, optional
        The original model; run in eval mode while the maps are computed (its modes are
        restored). Needed for ``target="predicted"``.
    channel_reduction : {"max", "sum", "mean"}
        How an input-shaped map becomes one value per pixel
        (:func:`~captum_regularized.attr.reduce_channels`).
    seed : int
        Seeds the random rankings (a CPU generator, so every device gets the same).
    device : str or torch.device, optional
        Where images are explained; default the device of ``model``, else of the
        explainer's model (``explain.forward_func``), else the CPU.
    attribute_kwargs : dict, optional
        Extra keyword arguments of ``explain``.
    progress : bool
        Show tqdm bars for the ranking passes and the retrainings.

    Returns
    -------
    RemoveAndRetrain
        ``fractions``, ``accuracy``, ``random_accuracy``, ``diff_roar``,
        ``diff_roar_mean``, the ``fill`` used, and the per-item ``correct`` and
        ``random_correct``: ``(len(fractions), len(test_loader.dataset))`` bool, whether
        each retrained model classifies each test item (index order, pixels removed) as
        its label; ``accuracy[k] == correct[k].double().mean()``. They come from the same
        single pass over the test set that gives the accuracies.

    Raises
    ------
    TypeError
        ``train`` not callable or not returning an ``nn.Module``; loaders that are not
        ``DataLoader`` s or batches that are not ``(images, labels, ...)`` with floating
        images; a bad ``fill`` type.
    ValueError
        Fractions outside ``(0, 100)``, not increasing or empty; an iterable-style, empty
        or non-deterministic data set; images with NaN or inf or of varying shapes;
        ``target="predicted"`` without ``model``; an unknown ``channel_reduction``.

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
    >>> result.correct.shape, result.correct.dtype
    (torch.Size([2, 40]), torch.bool)
    >>> bool((result.correct.double().mean(1) == result.accuracy).all())
    True
    """
    if not callable(train):
        raise TypeError(f"train must be a callable train(loader) -> model, got {train!r}")
    train_loader = _check_loader(train_loader, "train_loader")
    test_loader = _check_loader(test_loader, "test_loader")
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
