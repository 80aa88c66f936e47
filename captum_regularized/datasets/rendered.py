"""What every data set rendered in batches shares: items, chunked tensors, a TensorDataset."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["CHUNK_PIXELS", "Indices", "RenderedItems", "as_index_tensor", "check_int"]

Indices = int | Sequence[int] | torch.Tensor
CHUNK_PIXELS = 64 * 64 * 64
"""Pixels per chunk when :meth:`RenderedItems.tensors` picks the chunk size."""


def as_index_tensor(indices: Indices, length: int) -> torch.Tensor:
    """``indices`` as a flat CPU ``int64`` tensor, negative ones counted from ``length``."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be integers, got a tensor of {indices.dtype}")
        tensor = indices.detach().to("cpu", torch.int64).reshape(-1)
    elif isinstance(indices, Sequence):
        tensor = torch.tensor([operator.index(i) for i in indices], dtype=torch.int64)
    else:
        tensor = torch.tensor([operator.index(indices)], dtype=torch.int64)
    if tensor.numel() and (int(tensor.min()) < -length or int(tensor.max()) >= length):
        raise IndexError(f"indices must lie in [-{length}, {length}), got {indices}")
    return torch.where(tensor < 0, tensor + length, tensor)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` when it is an int in ``[low, high]``; a TypeError/ValueError naming it else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class RenderedItems(Dataset):
    """Base of the data sets that render many items at once.

    A subclass implements ``render(indices, device) -> (images, labels, masks)`` and
    ``__len__``; indexing, :meth:`tensors` and :meth:`materialize` are built on it.

    Examples
    --------
    >>> from captum_regularized.datasets import SyntheticShapes
    >>> images, labels, masks = SyntheticShapes(num_samples=20).tensors(chunk_size=8)
    >>> images.shape, labels.shape, masks.shape
    (torch.Size([20, 3, 32, 32]), torch.Size([20]), torch.Size([20, 1, 32, 32]))
    >>> fast = SyntheticShapes(num_samples=20).materialize()  # a TensorDataset
    >>> len(fast), fast[3][2].shape
    (20, torch.Size([1, 32, 32]))
    """

    image_size: int

    def render(
        self, indices: Indices, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels, masks)`` of the given items."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, masks = self.render([index])
        return images[0], labels[0], masks[0]

    def tensors(
        self, chunk_size: int | None = None, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All items as ``(images, labels, masks)``, rendered ``chunk_size`` items at a time
        (default: :data:`CHUNK_PIXELS` pixels per chunk)."""
        if chunk_size is None:
            chunk_size = max(1, CHUNK_PIXELS // (self.image_size * self.image_size))
        check_int("chunk_size", chunk_size, 1)
        starts = range(0, len(self), chunk_size) or [0]  # an empty data set: one empty chunk
        parts = [
            self.render(torch.arange(start, min(start + chunk_size, len(self))), device)
            for start in starts
        ]
        images, labels, masks = zip(*parts)
        return torch.cat(images), torch.cat(labels), torch.cat(masks)

    def materialize(
        self, chunk_size: int | None = None, device: str | torch.device | None = None
    ) -> TensorDataset:
        """All items in a :class:`~torch.utils.data.TensorDataset` (the fast path for training)."""
        return TensorDataset(*self.tensors(chunk_size, device))
