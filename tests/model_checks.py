"""Shared "model left untouched" checks used across the suite.

``untouched(model, *inputs)`` snapshots a model and its inputs, runs the block, and
asserts afterwards that no hook is left on any submodule, train/eval modes and
``requires_grad`` flags are the same, parameters (and optionally buffers) hold the
same values, and the inputs were not modified in place. It checks even when the
block raises, so it can wrap a ``pytest.raises`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
)


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of hooks of each kind on each submodule, keyed ``"name.kind"``."""
    counts = {}
    for name, module in model.named_modules():
        for kind in HOOK_DICTS:
            counts[f"{name}.{kind}"] = len(getattr(module, kind, {}))
    return counts


def assert_no_hooks(model: nn.Module) -> None:
    """Fail when any submodule carries a forward, pre-forward or backward hook."""
    left = {k: v for k, v in hook_counts(model).items() if v and "_state_dict" not in k}
    assert not left, f"hooks left behind: {left}"


@dataclass
class ModelSnapshot:
    modes: dict[str, bool]
    flags: dict[str, bool]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    hooks: dict[str, int]

    @classmethod
    def take(cls, model: nn.Module) -> "ModelSnapshot":
        return cls(
            modes={n: m.training for n, m in model.named_modules()},
            flags={n: p.requires_grad for n, p in model.named_parameters()},
            params={n: p.detach().clone() for n, p in model.named_parameters()},
            buffers={n: b.detach().clone() for n, b in model.named_buffers()},
            hooks=hook_counts(model),
        )

    def assert_unchanged(
        self, model: nn.Module, *, values: bool = True, buffers: bool = True
    ) -> None:
        now = ModelSnapshot.take(model)
        assert now.hooks == self.hooks, "hooks were added or removed"
        assert now.modes == self.modes, "train/eval modes changed"
        assert now.flags == self.flags, "requires_grad flags changed"
        if values:
            for name, value in self.params.items():
                assert torch.equal(now.params[name], value), f"parameter {name} changed"
        if buffers:
            for name, value in self.buffers.items():
                assert torch.equal(now.buffers[name], value), f"buffer {name} changed"


@contextlib.contextmanager
def untouched(
    model: nn.Module, *inputs: torch.Tensor, values: bool = True, buffers: bool = True
) -> Iterator[None]:
    """Assert that the block leaves ``model`` and ``inputs`` as they were (even on error)."""
    snapshot = ModelSnapshot.take(model)
    copies = [(t, t.detach().clone(), t.requires_grad) for t in inputs]
    try:
        yield
    finally:
        snapshot.assert_unchanged(model, values=values, buffers=buffers)
        for original, copy, requires_grad in copies:
            assert torch.equal(original.detach(), copy), "an input was modified in place"
            assert original.requires_grad == requires_grad, "an input's requires_grad changed"
