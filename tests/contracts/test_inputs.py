"""Contract: bad inputs get a clear error; edge batches and execution modes behave.

* NaN / inf inputs (and maps), non-float inputs and inputs on another device than the
  model are a ``ValueError``/``TypeError`` naming the argument, raised before the model
  runs (its BatchNorm statistics stay as they were, even in train mode);
* an empty batch gives an empty result or a ``ValueError`` naming the inputs, as the
  entry declares; a batch of one gives the batch's own row;
* under ``torch.inference_mode()`` an entry that needs autograd names inference mode,
  the others give their usual result;
* under ``torch.autocast`` the floating outputs have the inputs' dtype.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.contracts.registry import (
    BATCH,
    Entry,
    make_batch,
    make_model,
    output_tensors,
    select,
)
from tests.model_checks import untouched

WITH_INPUTS = select(lambda e: e.kind != "map")
ALL = select(lambda e: True)


def _target(entry: Entry, batch):
    return batch.labels if entry.targets else None


def _argument(entry: Entry) -> str:
    """What the error must name: the maps for map-only entries, else the inputs."""
    if entry.name.startswith("evaluate_"):
        return "images of data batch"
    return "inputs" if entry.kind != "map" or entry.name == "reduce_channels" else "maps|attrib"


def _spoil(entry: Entry, batch, value: float):
    if entry.kind == "map" and entry.name != "reduce_channels":
        maps = batch.maps.clone()
        maps[1, 0, 2, 3] = value
        batch.maps = maps
    else:
        inputs = batch.inputs.clone()
        inputs[1, 0, 2, 3] = value
        batch.inputs = inputs
    return batch


NON_FINITE = pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"]
)


@pytest.mark.parametrize("entry", select(lambda e: e.rejects_non_finite))
@NON_FINITE
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_non_finite_values_are_refused_before_the_model_runs(entry: Entry, value, mode):
    model, batch = make_model().train(mode == "train"), _spoil(entry, make_batch(), value)
    with untouched(model, batch.inputs, batch.maps), pytest.raises(
        ValueError, match=_argument(entry)
    ):
        entry.call(model, batch, _target(entry, batch))
    assert model.fault.calls == 0, "the model ran on a non-finite batch"


@pytest.mark.parametrize("entry", select(lambda e: not e.rejects_non_finite))
@NON_FINITE
def test_non_finite_values_stay_where_they_are(entry: Entry, value):
    batch = _spoil(entry, make_batch(), value)
    out = output_tensors(entry.call(make_model(), batch, None))[0]
    bad = ~torch.isfinite(out)
    assert bad.sum() == 1 and bool(bad[1].any()), "the non-finite pixel was hidden or spread"


@pytest.mark.parametrize(
    "entry", select(lambda e: e.kind != "map" and not e.name.startswith("evaluate_"))
)
def test_non_tensor_inputs_are_a_type_error(entry: Entry):
    model, batch = make_model(), make_batch()
    batch.inputs = batch.inputs.tolist()
    with untouched(model), pytest.raises(TypeError, match="inputs"):
        entry.call(model, batch, _target(entry, batch))


@pytest.mark.parametrize("entry", select(lambda e: e.kind != "map" and e.float_inputs_only))
def test_integer_inputs_are_a_type_error(entry: Entry):
    model, batch = make_model(), make_batch()
    batch.inputs = (batch.inputs * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"inputs|images|float"):
        entry.call(model, batch, _target(entry, batch))


@pytest.mark.parametrize("entry", WITH_INPUTS)
def test_inputs_on_another_device_are_refused(entry: Entry):
    # The meta device stands for "another device" on machines with one device.
    model, batch = make_model(), make_batch()
    batch.inputs = batch.inputs.to("meta")
    with pytest.raises((ValueError, RuntimeError), match=r"device|meta"):
        entry.call(model, batch, _target(entry, batch))


@pytest.mark.parametrize("entry", ALL)
def test_empty_batch(entry: Entry):
    model, batch = make_model(), make_batch().select(slice(0, 0))
    if entry.empty_batch == "error":
        with pytest.raises(ValueError, match=r"empty|inputs|data|batch"):
            entry.call(model, batch, _target(entry, batch))
        return
    output = entry.call(model, batch, _target(entry, batch))
    full = entry.call(model, make_batch(), _target(entry, make_batch()))
    for empty, whole in zip(output_tensors(output), output_tensors(full)):
        if whole.dim() > 0 and whole.shape[0] == BATCH:
            assert empty.shape == (0, *whole.shape[1:])
            assert empty.dtype == whole.dtype


@pytest.mark.parametrize("entry", select(lambda e: e.kind in ("attribution", "metric", "map")))
def test_batch_of_one_is_the_batchs_row(entry: Entry):
    model, batch = make_model(), make_batch()
    whole = [t for t in output_tensors(entry.call(model, batch, _target(entry, batch)))
             if t.dim() > 0 and t.shape[0] == BATCH]
    one = batch.select(2)
    alone = [t for t in output_tensors(entry.call(model, one, _target(entry, one)))
             if t.dim() > 0 and t.shape[0] == 1]
    if entry.name in ("normalize_per_example",) or not whole:
        return
    for w, a in zip(whole, alone):
        torch.testing.assert_close(a[0], w[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("entry", select(lambda e: e.differentiates))
def test_inference_mode_is_named(entry: Entry):
    model, batch = make_model(), make_batch()
    with untouched(model), torch.inference_mode(), pytest.raises(RuntimeError,
                                                                 match="inference_mode"):
        entry.call(model, batch, _target(entry, batch))


@pytest.mark.parametrize("entry", select(lambda e: not e.differentiates))
def test_forward_only_entries_work_in_inference_mode(entry: Entry):
    model, batch = make_model(), make_batch()
    expected = output_tensors(entry.call(model, batch, _target(entry, batch)))
    with torch.inference_mode():
        got = output_tensors(entry.call(model, batch, _target(entry, batch)))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("entry", select(lambda e: e.autocast and e.kind != "loss"))
def test_autocast_outputs_have_the_inputs_dtype(entry: Entry):
    model, batch = make_model(), make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = entry.call(model, batch, _target(entry, batch))
    floating = [t for t in output_tensors(output) if t.is_floating_point()]
    assert floating
    for tensor in floating:
        assert tensor.dtype == torch.float32, f"{entry.name} returned {tensor.dtype}"
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("entry", select(lambda e: e.autocast and e.kind == "loss"))
def test_autocast_losses_follow_autocast(entry: Entry):
    """Logits come out as the model gives them under autocast; penalties and losses in
    float32 (autocast's policy for losses), the perturbation in the inputs' dtype."""
    model, batch = make_model(), make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = entry.call(model, batch, _target(entry, batch))
        logits_dtype = model(batch.inputs).dtype
    for tensor in output_tensors(output):
        assert torch.isfinite(tensor).all()
        if tensor.dim() == 0:
            assert tensor.dtype == torch.float32, f"{entry.name}: scalar in {tensor.dtype}"
        elif tensor.shape == batch.inputs.shape:
            assert tensor.dtype == batch.inputs.dtype
        else:
            assert tensor.dtype == logits_dtype
