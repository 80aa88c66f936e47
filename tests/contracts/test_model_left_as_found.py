"""Contract: every entry point leaves the model as found, on success and on error.

"As found" is what :func:`tests.model_checks.untouched` checks (hooks of every kind,
per module and global; train/eval modes; ``requires_grad``; parameter values;
BatchNorm statistics and ``num_batches_tracked``; ``torch.is_grad_enabled()``; the
inputs), plus the parameters' ``.grad``. Faults are injected by the model's own
:class:`tests.contracts.registry.Fault` on the 1st, 3rd and last forward call and in
the backward pass; the fault must reach the caller unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.contracts.registry import (
    Entry,
    FaultRaised,
    make_batch,
    make_model,
    output_tensors,
    select,
)
from tests.model_checks import ModelSnapshot, untouched

WITH_MODEL = select(lambda e: e.uses_model)


def _target(entry: Entry, batch):
    return batch.labels if entry.targets else None


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("entry", WITH_MODEL)
@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
def test_eval_model_left_as_found(entry: Entry, grad_enabled: bool):
    model, batch = make_model(), make_batch()
    with torch.set_grad_enabled(grad_enabled), untouched(
        model, batch.inputs, batch.labels, batch.maps, batch.masks
    ):
        entry.call(model, batch, _target(entry, batch))
    assert all(g is None for g in _grads(model).values()), "parameter .grad was written"


@pytest.mark.parametrize("entry", select(lambda e: e.kind in ("attribution", "metric")))
def test_no_grad_around_the_call_changes_nothing(entry: Entry):
    """Gradients are switched on inside where needed: the same answer under no_grad."""
    model, batch = make_model(), make_batch()
    expected = output_tensors(entry.call(model, batch, _target(entry, batch)))
    with torch.no_grad():
        got = output_tensors(entry.call(model, batch, _target(entry, batch)))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
        assert not g.requires_grad


@pytest.mark.parametrize("entry", WITH_MODEL)
def test_train_mode_model_left_as_found(entry: Entry):
    model, batch = make_model().train(), make_batch()
    reference = copy.deepcopy(model)
    snapshot = ModelSnapshot.take(model)
    entry.call(model, batch, _target(entry, batch))
    assert all(m.training for m in model.modules()), "a train-mode module was left in eval mode"
    if entry.train_buffers == "untouched":
        snapshot.assert_unchanged(model)
        return
    snapshot.assert_unchanged(model, buffers=False)
    if entry.train_buffers == "one_forward":
        with torch.no_grad():
            reference(batch.inputs)
        for (name, now), (_, expected) in zip(model.named_buffers(), reference.named_buffers()):
            torch.testing.assert_close(now, expected, msg=f"buffer {name}")
    for name, buffer in model.named_buffers():
        assert torch.isfinite(buffer.float()).all(), f"buffer {name} is not finite"


def _forward_calls(entry: Entry) -> int:
    model, batch = make_model(), make_batch()
    model.fault.reset()
    entry.call(model, batch, _target(entry, batch))
    return model.fault.calls


def _fault_cases() -> list:
    cases = []
    for param in WITH_MODEL:
        entry = param.values[0]
        cases += [
            pytest.param(entry, where, id=f"{entry.name}-{where}")
            for where in ("first", "third", "last")
        ]
        if entry.differentiates:
            cases.append(pytest.param(entry, "backward", id=f"{entry.name}-backward"))
    return cases


@pytest.mark.parametrize(("entry", "where"), _fault_cases())
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_left_as_found_when_the_model_raises(entry: Entry, where: str, mode: str):
    calls = _forward_calls(entry)
    if where == "third" and calls < 3:
        pytest.skip(f"{entry.name} runs the model {calls} time(s)")
    if where == "last" and calls == 0:  # the first call of the copy is covered by "first"
        pytest.skip(f"{entry.name} runs only a copy of the model")
    model, batch = make_model().train(mode == "train"), make_batch()
    if where == "backward":
        model.fault.reset(raise_in_backward=True)
    else:
        model.fault.reset(raise_on_call={"first": 1, "third": 3, "last": calls}[where])
    # A loss may have run its one plain forward in train mode before the fault: its
    # BatchNorm statistics are then those of that forward, checked on success above.
    buffers = mode == "eval" or entry.train_buffers == "untouched"
    inputs = (batch.inputs, batch.labels, batch.maps, batch.masks)
    with untouched(model, *inputs, buffers=buffers), pytest.raises(FaultRaised):
        entry.call(model, batch, _target(entry, batch))
    assert all(g is None for g in _grads(model).values()), "parameter .grad was written"
