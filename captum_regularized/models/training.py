"""A plain training loop with a ``loss`` hook where the regularizers plug in."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

LossOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]
LossHook = Callable[[torch.Tensor, torch.Tensor], LossOutput]


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
) -> list[dict[str, float]]:
    """Train ``model`` with AdamW and return one record per epoch.

    Parameters
    ----------
    model : nn.Module
        Moved to ``device`` and left in train mode after training.
    train_set : Dataset
        Yields ``(image, label)`` or ``(image, label, mask)``.
    epochs, batch_size, lr, weight_decay : training settings
        AdamW with a cosine learning-rate schedule over all steps.
    device : str or torch.device
        Where to train.
    loss : callable, optional
        ``loss(images, labels)``. It may return a scalar training loss, or a pair
        ``(logits, penalty)`` whose loss is ``cross_entropy(logits, labels) + penalty``
        (the form of :class:`~captum_regularized.regularizers.GuidedGradientRegularizer`
        and :class:`~captum_regularized.regularizers.GradientNormPenalty`). ``None``
        means plain cross-entropy on ``model(images)``.
    progress : bool
        Show a tqdm bar per epoch.
    seed : int
        Seeds the shuffling order.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``loss`` (mean), ``accuracy`` (training batches, when
        logits are known, else NaN) and ``seconds``.

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
    device = torch.device(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2
    )
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, with_logits = 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for batch in bar:
            images, labels = _images_and_labels(batch)
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            if loss is None:
                logits = model(images)
                value = F.cross_entropy(logits, labels)
            else:
                out = loss(images, labels)
                if isinstance(out, tuple):
                    logits, penalty = out
                    value = F.cross_entropy(logits, labels) + penalty
                else:
                    logits, value = None, out
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
            tqdm.write(
                f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}, "
                f"train accuracy {history[-1]['accuracy']:.3f}"
            )
    return history


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``data`` in eval mode (the mode is restored).

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> from captum_regularized.models import SimpleCNN
    >>> data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    >>> 0.0 <= evaluate_accuracy(SimpleCNN(2, width=4), data) <= 1.0
    True
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct, seen = 0, 0
        for batch in DataLoader(data, batch_size=batch_size):
            images, labels = _images_and_labels(batch)
            logits = model(images.to(device))
            correct += int((logits.argmax(1).cpu() == labels).sum())
            seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_accuracy got an empty data set")
    return correct / seen
