"""A plain training loop with a ``loss`` hook where the regularizers plug in."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from captum_regularized._internal.checks import check_class_scores, check_data_batch
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import model_device, preserved_model
from captum_regularized.datasets.image_folder import collate_with_optional_masks
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

__all__ = [
    "LossHook",
    "PenaltyHook",
    "evaluate_accuracy",
    "evaluate_correct",
    "train_classifier",
    "with_cross_entropy",
]

Collate = Callable[[list[Any]], Any]


class LossHook(Protocol):
    """The ``loss`` of :func:`train_classifier`: the training loss of one batch.

    ``hook(images, labels)`` gets the batch on the training device and returns either
    the batch's 0-d training loss, with its graph down to the model's parameters, or a
    :class:`~captum_regularized.regularizers.RegularizerOutput` (what all three losses of
    :mod:`~captum_regularized.regularizers` return, so they are hooks as they are), whose
    ``.loss`` is back-propagated and whose ``logits`` give the training accuracy.

    A hook that returns a tensor may keep the batch's ``(B, classes)`` logits in
    ``last_logits`` on every call, for the training accuracy (otherwise NaN).

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> model = torch.nn.Linear(4, 2)
    >>> def smoothed(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ...     return F.cross_entropy(model(images), labels, label_smoothing=0.1)
    >>> hook: LossHook = smoothed
    >>> hook(torch.rand(3, 4), torch.tensor([0, 1, 0])).shape
    torch.Size([])
    """

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, /
    ) -> torch.Tensor | RegularizerOutput:
        """The batch's 0-d training loss, or its :class:`RegularizerOutput`."""
        ...


class PenaltyHook(Protocol):
    """A hook of one's own returning ``(logits, penalty)`` for a batch, with its graph:
    the model's ``(B, classes)`` logits and a 0-d penalty to add to the task loss.
    :func:`with_cross_entropy` turns one into a :class:`LossHook`."""

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, /
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` of the batch."""
        ...


class _CrossEntropyPlusPenalty:
    """The :class:`LossHook` made by :func:`with_cross_entropy`."""

    def __init__(self, penalty: PenaltyHook) -> None:
        self.penalty = penalty
        self.last_logits: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"with_cross_entropy({self.penalty!r})"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, /) -> torch.Tensor:
        out = self.penalty(images, labels)
        logits, value = _logits_and_penalty(out)
        self.last_logits = logits.detach()
        if isinstance(out, RegularizerOutput):
            return out.loss
        return F.cross_entropy(logits, labels) + value


def with_cross_entropy(penalty: PenaltyHook) -> LossHook:
    """The :class:`LossHook` ``cross_entropy(logits, labels) + penalty`` of a penalty hook.

    For a hook of one's own that returns a plain ``(logits, penalty)`` tuple; the
    library's regularizers return a
    :class:`~captum_regularized.regularizers.RegularizerOutput`, which
    :func:`train_classifier` takes as it is (wrapped here, its ``.loss`` is used).

    Parameters
    ----------
    penalty : PenaltyHook
        ``penalty(images, labels) -> (logits, penalty)``.

    Returns
    -------
    LossHook
        Calls ``penalty(images, labels)`` once per batch and keeps the logits in
        ``last_logits`` (so :func:`train_classifier` reports the training accuracy).

    Raises
    ------
    TypeError
        When ``penalty`` is not callable (at once), or when it returns something other
        than a ``(logits, penalty)`` pair of tensors (at the first batch).

    Examples
    --------
    >>> model = torch.nn.Linear(4, 2)
    >>> def zero_penalty(images, labels):
    ...     logits = model(images)
    ...     return logits, logits.new_zeros(())
    >>> images, labels = torch.rand(3, 4), torch.tensor([0, 1, 0])
    >>> loss = with_cross_entropy(zero_penalty)(images, labels)
    >>> torch.allclose(loss, F.cross_entropy(model(images), labels))
    True
    """
    if not callable(penalty):
        raise TypeError(
            f"penalty must be a callable returning (logits, penalty), got {type(penalty).__name__}"
        )
    return _CrossEntropyPlusPenalty(penalty)


def _logits_and_penalty(out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and all(isinstance(part, torch.Tensor) for part in out)
    ):
        raise TypeError(
            f"penalty must return a (logits, penalty) pair of tensors, got {type(out).__name__}"
        )
    return out[0], out[1]


_PAIR_DEPRECATED = (
    "a loss hook returning (logits, penalty) is deprecated and will be refused in the next "
    "release: pass loss=with_cross_entropy(hook) (captum_regularized.models), whose loss "
    "is the same cross_entropy(logits, labels) + penalty"
)


def _hook_loss(
    loss: LossHook, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """The training loss of a ``loss`` hook, the batch's logits (when known) and whether
    the hook used the deprecated ``(logits, penalty)`` form."""
    out: Any = loss(images, labels)
    if isinstance(out, RegularizerOutput):  # the library's own losses
        return out.loss, out.logits.detach(), False
    if isinstance(out, tuple):  # read exactly as earlier releases did
        logits, penalty = out
        return F.cross_entropy(logits, labels) + penalty, logits, True
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"loss must return the batch's 0-d training loss tensor, got {shape}")
    kept = getattr(loss, "last_logits", None)
    return out, kept if isinstance(kept, torch.Tensor) else None, False


def _collate(items: list[Any]) -> Any:
    """``default_collate``, except that ``(image, label, None)`` items (no masks) collate too."""
    first = items[0]
    if (
        isinstance(first, (tuple, list))
        and len(first) == 3
        and any(isinstance(item, (tuple, list)) and item[2] is None for item in items)
    ):
        return collate_with_optional_masks(items)
    return default_collate(items)


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            "the data set must yield (image, label) or (image, label, mask) items, "
            f"got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    device: str | torch.device = "cpu",
    loss: LossHook | None = None,
    progress: bool = True,
    weight_decay: float = 1e-4,
    seed: int = 0,
    collate_fn: Collate | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with AdamW and return one record per epoch.

    Parameters
    ----------
    model : nn.Module
        Moved to ``device`` and left in train mode after training (when training
        stops with an error, its modules get back the modes they had).
    train_set : Dataset
        A map-style data set (with ``len``) of ``(image, label)`` or
        ``(image, label, mask-or-None)`` items, e.g.
        :class:`~captum_regularized.datasets.ImageFolderWithMasks` without masks. When
        the model has BatchNorm layers and the last batch would hold a single item, that
        batch is dropped (a different, random item each epoch): BatchNorm cannot
        normalise a batch of one in train mode.
    epochs, batch_size, lr, weight_decay : training settings
        AdamW with a cosine learning-rate schedule over all steps.
    device : str or torch.device
        Where to train.
    loss : LossHook, optional
        ``loss(images, labels)`` returns the batch's 0-d training loss or a
        :class:`~captum_regularized.regularizers.RegularizerOutput` (see
        :class:`LossHook`): any of the library's regularizers as it is, e.g.
        ``loss=GuidedGradientRegularizer(model)``. ``None`` means plain cross-entropy on
        ``model(images)``. A hook that returns a plain ``(logits, penalty)`` tuple still
        trains as ``cross_entropy(logits, labels) + penalty`` for this release, with a
        ``DeprecationWarning`` (wrap it in :func:`with_cross_entropy`).
    progress : bool
        Show a tqdm bar per epoch and, after it, a line with the epoch's mean loss and
        (when logits are known) its training accuracy.
    seed : int
        Seeds the shuffling order.
    collate_fn : callable, optional
        The ``DataLoader``'s collate function. The default is ``default_collate``, with
        :func:`~captum_regularized.datasets.collate_with_optional_masks` for items whose
        mask is ``None``.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``loss`` (mean), ``accuracy`` (training batches, when
        logits are known: no hook, a :class:`RegularizerOutput`, or a hook with
        ``last_logits``; else NaN) and
        ``seconds``.

    Raises
    ------
    ValueError
        For ``epochs`` or ``batch_size`` below 1, ``lr <= 0`` or an empty ``train_set``
        (before any work), a batch of images holding NaN or inf (before the model sees
        it: nothing is updated from it), or a model output that is not ``(batch, classes)``.
    TypeError
        When ``train_set`` has no length, its batches are not ``(images, labels, ...)``,
        the model returns something other than one tensor, a Hugging Face
        ``ModelOutput`` or a dict with key ``"logits"`` (whose logits are used), or
        ``loss`` returns something other than a 0-d tensor.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> from captum_regularized.models import SimpleCNN
    >>> data = TensorDataset(torch.rand(16, 3, 8, 8), torch.randint(0, 2, (16,)))
    >>> history = train_classifier(SimpleCNN(2, width=4), data, epochs=1, batch_size=8,
    ...                            progress=False)
    >>> sorted(history[0])
    ['accuracy', 'epoch', 'loss', 'seconds']
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}"
        )
    try:
        size = len(train_set)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "train_set must be a map-style data set with a length, got "
            f"{type(train_set).__name__}"
        ) from None
    if size == 0:
        raise ValueError("train_set is empty; train_classifier needs at least one item")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    # BatchNorm cannot normalise a batch of one in train mode (and a batch whose maps are
    # 1 x 1 fails outright): such a last batch is dropped, a different item each epoch.
    one_left = size % batch_size == 1 and size > batch_size
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=generator,
        collate_fn=_collate if collate_fn is None else collate_fn,
        drop_last=one_left and _has_batchnorm(model),
    )
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.to(device).train()
        return _train(model, loader, epochs, lr, weight_decay, device, loss, progress)
    except BaseException:
        for module, training in modes:
            module.training = training
        raise


def _has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (any dimension, lazy or synchronised)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    """The progress line of one epoch's ``record``; the training accuracy only when known.

    Examples
    --------
    >>> _epoch_line({"epoch": 1, "loss": 0.5, "accuracy": 0.75}, 2)
    'epoch 1/2: loss 0.5000, train accuracy 0.750'
    >>> _epoch_line({"epoch": 2, "loss": 0.25, "accuracy": float("nan")}, 2)
    'epoch 2/2: loss 0.2500'
    """
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"
    if not math.isnan(record["accuracy"]):
        line += f", train accuracy {record['accuracy']:.3f}"
    return line


def _train(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    weight_decay: float,
    device: torch.device,
    loss: LossHook | None,
    progress: bool,
) -> list[dict[str, float]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2
    )
    history: list[dict[str, float]] = []
    warned = False
    for epoch in range(epochs):
        start = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, with_logits = 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for index, batch in enumerate(bar):
            images, labels = _images_and_labels(batch)
            images, labels = images.to(device), labels.to(device)
            check_data_batch(images, index, "train_classifier", floating=False)
            optimizer.zero_grad(set_to_none=True)
            logits: torch.Tensor | None
            if loss is None:
                output = logits_of(model(images), "model")
                logits = check_class_scores(output, batch=len(images), who="model")
                value = F.cross_entropy(logits, labels)
            else:
                value, logits, paired = _hook_loss(loss, images, labels)
                if paired and not warned:  # once per call
                    warnings.warn(_PAIR_DEPRECATED, DeprecationWarning, stacklevel=3)
                    warned = True
            value.backward()
            optimizer.step()
            scheduler.step()
            total_loss += value.detach() * len(labels)
            seen += len(labels)
            if logits is not None:
                correct += (logits.detach().argmax(1) == labels).sum()
                with_logits += len(labels)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(total_loss) / max(seen, 1),
                "accuracy": float(correct) / with_logits if with_logits else float("nan"),
                "seconds": time.perf_counter() - start,
            }
        )
        if progress:
            tqdm.write(_epoch_line(history[-1], epochs))
    return history


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    collate_fn: Collate | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``data`` in eval mode (the modes are restored).

    Parameters
    ----------
    model : nn.Module
        A classifier returning ``(batch, classes)`` scores.
    data : Dataset
        ``(image, label)`` or ``(image, label, mask-or-None)`` items.
    batch_size : int
        Items per forward pass.
    device : str or torch.device, optional
        Where the images go; default the model's device, or (for a model without
        parameters or buffers) wherever the data set puts them.
    collate_fn : callable, optional
        As in :func:`train_classifier`.

    Returns
    -------
    float
        The share of items whose highest score is their label: the mean of
        :func:`evaluate_correct`.

    Raises
    ------
    ValueError
        For an empty ``data`` set, a batch of images holding NaN or inf, or a model
        output that is not ``(batch, classes)``. Integer images are passed to the model
        as they are (a model may normalise them itself).
    TypeError
        When the model returns something other than one tensor, a Hugging Face
        ``ModelOutput`` or a dict with key ``"logits"`` (whose logits are used).

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> from captum_regularized.models import SimpleCNN
    >>> data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    >>> 0.0 <= evaluate_accuracy(SimpleCNN(2, width=4), data) <= 1.0
    True
    """
    hits = _classified_correctly(model, data, batch_size, device, collate_fn,
                                 "evaluate_accuracy")
    return float(hits.sum()) / len(hits)


def evaluate_correct(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    collate_fn: Collate | None = None,
) -> torch.Tensor:
    """Per item of ``data``, whether ``model`` (in eval mode, modes restored) classifies it
    as its label: the paired values behind :func:`evaluate_accuracy`.

    Arguments and errors as in :func:`evaluate_accuracy`.

    Returns
    -------
    Tensor
        ``(len(data),)`` bool on the CPU, in the data set's index order.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.eye(3), torch.tensor([0, 2, 2]))
    >>> evaluate_correct(nn.Identity(), data).tolist()
    [True, False, True]
    """
    return _classified_correctly(model, data, batch_size, device, collate_fn,
                                 "evaluate_correct")


def _classified_correctly(
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    device: str | torch.device | None,
    collate_fn: Collate | None,
    who: str,
) -> torch.Tensor:
    target_device = model_device(model) if device is None else torch.device(device)
    loader = DataLoader(
        data, batch_size=batch_size, collate_fn=_collate if collate_fn is None else collate_fn
    )
    hits: list[torch.Tensor] = []
    with preserved_model(model, eval_mode=True), torch.no_grad():
        for index, batch in enumerate(loader):
            images, labels = _images_and_labels(batch)
            if target_device is not None:
                images = images.to(target_device)
            check_data_batch(images, index, who, floating=False)
            output = logits_of(model(images), "model")
            logits = check_class_scores(output, batch=len(images), who="model")
            hits.append((logits.argmax(1) == labels.to(logits.device)).cpu())
    if not hits:
        raise ValueError(f"data is empty; {who} needs at least one item")
    return torch.cat(hits)
