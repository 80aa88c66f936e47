"""Leave the model as found: train/eval mode, ``requires_grad`` flags, hooks, BatchNorm.

Every public class that touches a model runs its work inside :func:`preserved_model`
and registers its hooks through the :class:`HookBag` it yields: whatever happens inside,
an exception included, modes and flags are restored and the hooks removed. Forward
passes that must not move BatchNorm running statistics run inside
:func:`kept_batchnorm_statistics` (or :func:`kept_reached_batchnorm_statistics` when
the model is unknown); a training step whose own passes move them runs inside
:func:`batchnorm_statistics_restored_on_error`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle


def find_module(forward_func: Callable[..., Any]) -> nn.Module | None:
    """Return the ``nn.Module`` behind ``forward_func`` (the module itself or a bound method)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    return None


def unwrap_data_parallel(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The callable to run in place of an ``nn.DataParallel`` model: the wrapped module.

    The guided rule (a torch function mode of the calling thread) and the layer hooks
    cannot follow the replicas ``nn.DataParallel`` runs in their own threads, so those
    methods run the wrapped module on its own device. Anything else is returned as is.
    """
    if isinstance(forward_func, nn.DataParallel):
        return forward_func.module
    return forward_func


def is_compiled(model: nn.Module | None) -> bool:
    """Whether ``model`` or a submodule was ``torch.compile``'d (wrapped or in place)."""
    if model is None:
        return False
    return any(
        hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None
        for module in model.modules()
    )


class HookBag:
    """Collects hook handles so they can all be removed in one place."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        """Keep ``handle`` for removal."""
        self._handles.append(handle)

    def remove_all(self) -> None:
        """Remove every handle collected so far (idempotent)."""
        while self._handles:
            self._handles.pop().remove()


@contextlib.contextmanager
def preserved_model(model: nn.Module | None, *, eval_mode: bool = False) -> Iterator[HookBag]:
    """Run a block and restore ``model``'s modes, ``requires_grad`` flags and hooks afterwards.

    Yields a :class:`HookBag` whose hooks are removed when the block ends (also for
    ``model=None``, a plain function). ``eval_mode`` switches the model to eval mode
    for the block.

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU()).train()
    >>> with preserved_model(m, eval_mode=True) as hooks:
    ...     hooks.add(m[1].register_forward_hook(lambda *a: None))
    ...     m.training
    False
    >>> m.training, len(m[1]._forward_hooks)
    (True, 0)
    """
    bag = HookBag()
    if model is None:
        try:
            yield bag
        finally:
            bag.remove_all()
        return
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        yield bag
    finally:
        bag.remove_all()
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


def _moving_batchnorms(model: nn.Module | None) -> list[_BatchNorm]:
    """The BatchNorm layers a forward pass would update: train mode, tracking statistics."""
    if model is None:
        return []
    return [
        module
        for module in model.modules()
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats
    ]


@contextlib.contextmanager
def kept_batchnorm_statistics(model: nn.Module | None) -> Iterator[None]:
    """Run a block whose forward passes leave BatchNorm running statistics alone.

    The one way every method of the package runs its extra forward passes. BatchNorm
    layers keep their mode (training ones normalise with the batch's own statistics),
    but ``track_running_stats`` is off for the block, even when it raises, so their
    running mean, variance and batch counter are neither moved nor written. Graphs that
    saved the statistics stay valid. ``None`` (a plain function) keeps nothing.

    Examples
    --------
    >>> bn = nn.BatchNorm1d(2).train()
    >>> with kept_batchnorm_statistics(bn):
    ...     _ = bn(torch.randn(8, 2) + 5)
    >>> bn.running_mean.tolist(), bn.num_batches_tracked.item(), bn.training
    ([0.0, 0.0], 0, True)
    >>> bn.track_running_stats
    True
    """
    switched = _moving_batchnorms(model)
    try:
        for module in switched:
            module.track_running_stats = False
        yield
    finally:
        for module in switched:
            module.track_running_stats = True


@contextlib.contextmanager
def kept_reached_batchnorm_statistics() -> Iterator[None]:
    """Keep the running statistics of every BatchNorm module the block's passes reach.

    For a ``forward_func`` that is not an ``nn.Module`` (``lambda t: model(t)``), whose
    BatchNorm modules are unknown up front. A global forward pre-hook, acting in this
    thread only, saves a module's running mean, variance and batch counter the first
    time it runs; they are written back when the block ends, even when it raises.
    Modules keep their mode. Compiled code that skips module hooks is not seen.

    Examples
    --------
    >>> bn = nn.BatchNorm1d(2).train()
    >>> with kept_reached_batchnorm_statistics():
    ...     _ = (lambda t: bn(t))(torch.randn(8, 2) + 5)
    >>> bn.running_mean.tolist(), bn.num_batches_tracked.item()
    ([0.0, 0.0], 0)
    """
    thread = threading.get_ident()
    saved: dict[int, tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def save(module: nn.Module, args: Any) -> None:
        if (
            isinstance(module, _BatchNorm)
            and id(module) not in saved
            and threading.get_ident() == thread
        ):
            buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
            saved[id(module)] = (  # the module is kept so that its id stays unique
                module,
                [
                    (buffer, buffer.detach().clone())
                    for buffer in buffers
                    if buffer is not None and not is_lazy(buffer)
                ],
            )

    handle = register_module_forward_pre_hook(save)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for _, buffers in saved.values():
                for buffer, value in buffers:
                    buffer.copy_(value)


@contextlib.contextmanager
def batchnorm_statistics_restored_on_error(model: nn.Module) -> Iterator[None]:
    """Write BatchNorm running statistics back when the block raises.

    A training step that fails half-way must leave the model as found, although its own
    passes moved the statistics. Only train-mode layers that track running statistics
    are saved (a device copy, no host synchronisation); on success nothing is written back.

    Examples
    --------
    >>> bn = nn.BatchNorm1d(2).train()
    >>> try:
    ...     with batchnorm_statistics_restored_on_error(bn):
    ...         _ = bn(torch.randn(8, 2) + 5)
    ...         raise KeyError("late failure")
    ... except KeyError:
    ...     pass
    >>> bn.running_mean.tolist()
    [0.0, 0.0]
    """
    saved = [
        (buffer, buffer.detach().clone())
        for module in _moving_batchnorms(model)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        raise


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (else the model),
    on which the losses' extra passes run, outside DDP's gradient synchronisation.
    """
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def model_device(model: nn.Module | None) -> torch.device | None:
    """Device of the model's first parameter or buffer, ``None`` when it has neither."""
    if model is None:
        return None
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return None
