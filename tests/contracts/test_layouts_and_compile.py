"""Contract: the memory layout and ``torch.compile`` do not change the answer.

* ``channels_last`` inputs and maps, and for the entries that take a model also the
  model converted to ``channels_last``, give the contiguous call's outputs; the inputs
  are not modified;
* an entry with ``compiles=True`` given a ``torch.compile``'d model runs the compiled
  graph and gives the eager answer (and the losses the eager parameter gradients);
* an entry with ``refuses_compiled=True`` raises a ``TypeError`` pointing to
  ``model._orig_mod`` (or, compiled in place, saying so) before the model runs.

The compile contracts use the ``aot_eager`` backend: dynamo and AOT autograd (the
forward and backward graphs the library sees) without Inductor's code generation,
which on a 2-core CPU takes about a minute for the first graph and 6-9 s for each
further one; ``aot_eager`` takes one to three seconds per entry.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from tests.contracts.registry import (
    Batch,
    Entry,
    make_batch,
    make_model,
    output_tensors,
    select,
)
from tests.model_checks import untouched

BACKEND = "aot_eager"
CL = torch.channels_last
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def _batch() -> Batch:
    """The registry's batch with three-channel maps, so that ``channels_last`` is a
    different layout for them too (one channel is the same layout either way)."""
    batch = make_batch()
    gen = torch.Generator().manual_seed(2)
    batch.maps = torch.randn(batch.inputs.shape, generator=gen)
    return batch


def _channels_last(batch: Batch) -> Batch:
    """Every 4-D tensor of the batch in ``channels_last`` (same values)."""
    out = Batch(**vars(batch))
    for name, tensor in vars(batch).items():
        if tensor.dim() == 4:
            setattr(out, name, tensor.contiguous(memory_format=CL))
    assert out.inputs.is_contiguous(memory_format=CL) and not out.inputs.is_contiguous()
    return out


def _run(
    entry: Entry, model: nn.Module, batch: Batch, *, with_grads: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The entry's output tensors (seeded: some losses draw random numbers), and with
    ``with_grads`` for losses the gradient of their scalar terms with respect to the
    parameters (about three times the cost of the loss)."""
    target = batch.labels if entry.targets else None
    torch.manual_seed(0)
    outputs = output_tensors(entry.call(model, batch, target))
    scalars = [t for t in outputs if t.dim() == 0 and t.requires_grad]
    grads: list[torch.Tensor | None] = []
    if with_grads and entry.kind == "loss" and scalars:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = list(torch.autograd.grad(sum(scalars), params, allow_unused=True))
    return [t.detach() for t in outputs], grads


def _assert_same(got: Any, expected: Any, what: str) -> None:
    (outputs, grads), (expected_outputs, expected_grads) = got, expected
    assert len(outputs) == len(expected_outputs), f"{what}: a different number of outputs"
    for i, (g, e) in enumerate(zip(outputs, expected_outputs)):
        torch.testing.assert_close(g, e, **TOLERANCE, msg=lambda m, i=i: f"{what}, output {i}: {m}")
    assert len(grads) == len(expected_grads)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert (g is None) == (e is None), f"{what}: parameter {i} got a gradient only once"
        if g is not None:
            torch.testing.assert_close(
                g, e, **TOLERANCE, msg=lambda m, i=i: f"{what}, gradient of parameter {i}: {m}"
            )


# ---------------------------------------------------------------- channels_last


@pytest.mark.parametrize("entry", select(lambda e: True))
def test_channels_last_gives_the_contiguous_answer(entry: Entry):
    """``channels_last`` inputs and maps, with the model as built and (for entries that
    take one) with the model converted to ``channels_last``."""
    batch = _batch()
    expected = _run(entry, make_model(), batch)
    strided = _channels_last(batch)
    layouts = ["contiguous", "channels_last"] if entry.uses_model else ["contiguous"]
    for layout in layouts:
        model = make_model()
        if layout == "channels_last":
            model = model.to(memory_format=CL)
            assert model.stem[0].weight.is_contiguous(memory_format=CL)
        with untouched(model, strided.inputs, strided.maps):
            got = _run(entry, model, strided)
        assert strided.inputs.is_contiguous(memory_format=CL), "the inputs' layout changed"
        _assert_same(got, expected, f"{entry.name}: channels_last inputs, {layout} model")


# ---------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():
    """Each compile contract compiles its own model from scratch (no recompile limits,
    no graph cached from another test)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("entry", select(lambda e: e.compiles))
def test_a_compiled_model_gives_the_eager_answer(entry: Entry, fresh_dynamo):
    """Attribution classes get a model compiled with a dynamic batch dimension: what
    dynamo makes once a second batch size has come, and graphs whose backward donates
    its saved buffers, as Inductor's (the default backend) does from the first call.
    Metrics and losses are compiled statically, which is twice as fast (they also gave
    the eager answer with ``dynamic=True`` and with Inductor when this was written)."""
    model, batch = make_model(), _batch()
    expected = _run(entry, model, batch, with_grads=True)
    counter = CompileCounterWithBackend(BACKEND)
    dynamic = True if entry.kind == "attribution" else None
    compiled = torch.compile(model, backend=counter, dynamic=dynamic)
    with untouched(model, batch.inputs, batch.maps):
        got = _run(entry, compiled, batch, with_grads=True)
    assert counter.frame_count >= 1, f"{entry.name} never ran the compiled model"
    _assert_same(got, expected, f"{entry.name} on a compiled model")


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
@pytest.mark.parametrize("entry", select(lambda e: e.refuses_compiled))
def test_a_compiled_model_is_refused_with_the_way_out(entry: Entry, how: str, fresh_dynamo):
    model, batch = make_model(), _batch()
    counter = CompileCounterWithBackend(BACKEND)
    if how == "torch.compile":
        compiled, way_out = torch.compile(model, backend=counter), r"_orig_mod"
    else:
        model.compile(backend=counter)
        compiled, way_out = model, r"compiled in place"
    target = batch.labels if entry.targets else None
    with untouched(model, batch.inputs), pytest.raises(TypeError, match=way_out):
        entry.call(compiled, batch, target)
    assert counter.frame_count == 0 and model.fault.calls == 0, "the model ran before the refusal"
