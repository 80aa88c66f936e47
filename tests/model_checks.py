"""Shared "model left untouched" checks used across the suite.

``untouched(model, *inputs)`` snapshots a model and its inputs, runs the block, and
asserts afterwards that no hook of any kind is left on any submodule or globally,
train/eval modes, ``requires_grad`` flags, BatchNorm ``track_running_stats`` and
``momentum``, ``torch.is_grad_enabled()`` and the stack of torch function modes are the
same, parameters (and optionally buffers, BatchNorm statistics and ``num_batches_tracked``
among them) hold the same values, and the inputs were not modified in place. It checks
even when the block raises, so it can wrap a ``pytest.raises`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as module_globals

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of hooks of each kind on each submodule (``"name.kind"``) and globally."""
    counts = {}
    for name, module in model.named_modules():
        for kind in HOOK_DICTS:
            counts[f"{name}.{kind}"] = len(getattr(module, kind, {}))
    for kind in GLOBAL_HOOK_DICTS:
        counts[f"<global>.{kind}"] = len(getattr(module_globals, kind, {}))
    return counts


def assert_no_hooks(model: nn.Module) -> None:
    """Fail when any submodule carries a forward, pre-forward or backward hook."""
    left = {k: v for k, v in hook_counts(model).items() if v and "state_dict" not in k}
    assert not left, f"hooks left behind: {left}"


@dataclass
class ModelSnapshot:
    modes: dict[str, bool]
    flags: dict[str, bool]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    hooks: dict[str, int]
    grad_enabled: bool
    function_modes: int
    batchnorm_settings: dict[str, tuple[bool, float | None]]

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        return cls(
            modes={n: m.training for n, m in model.named_modules()},
            flags={n: p.requires_grad for n, p in model.named_parameters()},
            params={n: p.detach().clone() for n, p in model.named_parameters()},
            buffers={n: b.detach().clone() for n, b in model.named_buffers()},
            hooks=hook_counts(model),
            grad_enabled=torch.is_grad_enabled(),
            function_modes=len(torch.overrides._get_current_function_mode_stack()),
            batchnorm_settings={
                n: (m.track_running_stats, m.momentum)
                for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
            },
        )

    def assert_unchanged(
        self, model: nn.Module, *, values: bool = True, buffers: bool = True
    ) -> None:
        now = ModelSnapshot.take(model)
        changed = {k: (v, now.hooks.get(k)) for k, v in self.hooks.items() if now.hooks.get(k) != v}
        assert not changed, f"hooks were added or removed (before, after): {changed}"
        assert now.grad_enabled == self.grad_enabled, "torch.is_grad_enabled() changed"
        assert now.function_modes == self.function_modes, "a torch function mode was left on"
        assert now.batchnorm_settings == self.batchnorm_settings, "BatchNorm settings changed"
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
            same = torch.equal(original.detach(), copy) or bool(
                torch.isclose(original.detach(), copy, rtol=0, atol=0, equal_nan=True).all()
            )
            assert same, "an input was modified in place"
            assert original.requires_grad == requires_grad, "an input's requires_grad changed"
