"""Contract: every Captum target form gives the per-example loop's answer; bad targets
and bad training labels are a ``ValueError``/``TypeError`` naming the argument."""

from __future__ import annotations

import pytest
import torch

from tests.contracts.registry import (
    BATCH,
    NUM_CLASSES,
    Entry,
    make_batch,
    make_model,
    output_tensors,
    select,
)
from tests.model_checks import untouched

TARGETED = select(lambda e: e.targets)
LABELLED = select(lambda e: e.labels)

CLASSES = [2, 0, 1, 2]


def _per_example(output: object, batch: int) -> list[torch.Tensor]:
    return [t for t in output_tensors(output) if t.dim() > 0 and t.shape[0] == batch]


def _loop_reference(entry: Entry, model, batch) -> list[torch.Tensor]:
    """Each example alone, with its class as a plain int, concatenated."""
    rows = [_per_example(entry.call(model, batch.select(i), CLASSES[i]), 1) for i in range(BATCH)]
    return [torch.cat(parts) for parts in zip(*rows)]


FORMS = {
    "list": CLASSES,
    "tensor": torch.tensor(CLASSES),
    "int32-tensor": torch.tensor(CLASSES, dtype=torch.int32),
    "list-of-tuples": [(c,) for c in CLASSES],
    "list-of-tensors": [torch.tensor(c) for c in CLASSES],
}


@pytest.mark.parametrize("entry", TARGETED)
@pytest.mark.parametrize("form", list(FORMS))
def test_target_forms_match_the_per_example_loop(entry: Entry, form: str):
    model, batch = make_model(), make_batch()
    expected = _loop_reference(entry, model, batch)
    got = _per_example(entry.call(model, batch, FORMS[form]), BATCH)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("entry", TARGETED)
@pytest.mark.parametrize("form", ["int", "tuple", "0-d tensor", "1-element tensor"])
def test_one_target_for_the_whole_batch(entry: Entry, form: str):
    model, batch = make_model(), make_batch()
    value = {"int": 1, "tuple": (1,), "0-d tensor": torch.tensor(1),
             "1-element tensor": torch.tensor([1])}[form]
    got = _per_example(entry.call(model, batch, value), BATCH)
    expected = _per_example(entry.call(model, batch, [1] * BATCH), BATCH)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


class ClassScore:
    """pytorch-grad-cam's ``ClassifierOutputTarget``, written here: the class column of a
    batch output, the class entry of one example's output row."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() == 1:
            return output[self.category]
        return output[:, self.category]


RANGE = rf"target.*\[0, {NUM_CLASSES - 1}\]"  # out-of-range errors give the valid range
BAD_TARGETS = {
    "out-of-range": (NUM_CLASSES, ValueError, RANGE),
    "negative": (-1, ValueError, RANGE),
    "out-of-range-in-list": ([0, 1, 2, NUM_CLASSES], ValueError, RANGE),
    "negative-tensor": (torch.tensor([0, -1, 1, 2]), ValueError, RANGE),
    "wrong-length-list": ([0, 1], ValueError, "target"),
    "wrong-length-tensor": (torch.tensor([0, 1, 2]), ValueError, "target"),
    "float-tensor": (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "target"),
    "bool-tensor": (torch.tensor([True, False, True, False]), TypeError, "target"),
    "bool": (True, TypeError, "target"),
    "2-d-tensor": (torch.tensor([[0, 1], [2, 0]]), ValueError, "target"),
    "float": (1.0, TypeError, "target"),
    "string": ("cat", TypeError, "target"),
    "wrong-length-callables": ([ClassScore(0)] * 2, ValueError, "target"),
    "mixed-callables-and-ints": ([ClassScore(0), 1, 2, 0], TypeError, "target"),
    "callable-class": (ClassScore, TypeError, "target callables must be instances"),
}


@pytest.mark.parametrize("entry", TARGETED)
@pytest.mark.parametrize("bad", list(BAD_TARGETS))
def test_bad_targets_are_refused_naming_target(entry: Entry, bad: str):
    model, batch = make_model(), make_batch()
    value, error, match = BAD_TARGETS[bad]
    with untouched(model, batch.inputs), pytest.raises(error, match=match):
        entry.call(model, batch, value)


BAD_LABELS = {
    "out-of-range": torch.tensor([0, 1, 2, NUM_CLASSES]),
    "negative": torch.tensor([0, 1, -1, 2]),
    "ignore-index": torch.tensor([0, 1, -100, 2]),
    "float": torch.tensor([0.0, 1.0, 2.0, 0.0]),
    "bool": torch.tensor([True, False, True, False]),
    "column": torch.tensor([[0], [1], [2], [0]]),
    "wrong-length": torch.tensor([0, 1]),
}


@pytest.mark.parametrize("entry", LABELLED)
@pytest.mark.parametrize("bad", list(BAD_LABELS))
def test_bad_labels_are_refused_naming_labels(entry: Entry, bad: str):
    model, batch = make_model(), make_batch()
    batch.labels = BAD_LABELS[bad]
    with pytest.raises((ValueError, TypeError), match="labels"):
        entry.call(model, batch, None)


# --- pytorch-grad-cam's target callables


def _assert_same(got: object, expected: object) -> None:
    got_tensors, expected_tensors = output_tensors(got), output_tensors(expected)
    assert len(got_tensors) == len(expected_tensors) > 0
    for g, e in zip(got_tensors, expected_tensors):
        torch.testing.assert_close(g, e)


CALLABLE_FORMS = {
    "one callable": (ClassScore(1), 1),
    "per-example list": ([ClassScore(c) for c in CLASSES], CLASSES),
    "per-example tuple": (tuple(ClassScore(c) for c in CLASSES), CLASSES),
}


@pytest.mark.parametrize("entry", TARGETED)
@pytest.mark.parametrize("form", list(CALLABLE_FORMS))
def test_classifier_output_targets_match_class_targets(entry: Entry, form: str):
    model, batch = make_model(), make_batch()
    callables, classes = CALLABLE_FORMS[form]
    _assert_same(entry.call(model, batch, callables), entry.call(model, batch, classes))


SCORES = {
    "one callable": (lambda output: output[:, 1], 1),
    "per-example list": ([lambda row, k=k: row[k] for k in CLASSES], CLASSES),
}


@pytest.mark.parametrize("entry", TARGETED)
@pytest.mark.parametrize("form", list(SCORES))
def test_score_callables_are_differentiated_or_refused_naming_target(entry: Entry, form: str):
    """Without ``category`` a callable is a score: differentiated where the entry takes
    scores, a ``TypeError`` naming ``target`` where it needs a class."""
    model, batch = make_model(), make_batch()
    scores, classes = SCORES[form]
    if entry.score_targets:
        _assert_same(entry.call(model, batch, scores), entry.call(model, batch, classes))
    else:
        with untouched(model, batch.inputs), pytest.raises(TypeError, match="category"):
            entry.call(model, batch, scores)


@pytest.mark.parametrize("entry", select(lambda e: e.score_targets))
def test_a_score_of_the_wrong_shape_is_a_value_error(entry: Entry):
    model, batch = make_model(), make_batch()
    with untouched(model, batch.inputs), pytest.raises(ValueError, match="one score per example"):
        entry.call(model, batch, lambda output: output.sum())
    with untouched(model, batch.inputs), pytest.raises(ValueError, match=r"target\[0\]"):
        entry.call(model, batch, [lambda row: row] * BATCH)


@pytest.mark.parametrize("entry", TARGETED)
def test_pytorch_grad_cam_targets(entry: Entry):
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, batch = make_model(), make_batch()
    per_example = [targets.ClassifierOutputTarget(c) for c in CLASSES]
    _assert_same(entry.call(model, batch, per_example), entry.call(model, batch, CLASSES))
    one = targets.ClassifierOutputTarget(2)
    _assert_same(entry.call(model, batch, one), entry.call(model, batch, 2))
