"""The metrics that are one field of a fuller result: same arguments, same numbers."""

from __future__ import annotations

import inspect

import pytest
import torch

from captum_regularized.metrics import (
    average_drop,
    average_gain,
    confidence_change,
    deletion_auc,
    deletion_curve,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
)
from captum_regularized.metrics._field_wrappers import takes_arguments_of

WRAPPERS = [
    (deletion_auc, deletion_curve, "auc"),
    (insertion_auc, insertion_curve, "auc"),
    (average_drop, confidence_change, "drop"),
    (average_gain, confidence_change, "gain"),
    (increase_in_confidence, confidence_change, "increase"),
]


@pytest.mark.parametrize(("wrapper", "full", "field"), WRAPPERS)
def test_the_signature_is_the_full_functions(wrapper, full, field):
    wrapped = inspect.signature(wrapper)
    original = inspect.signature(full)
    assert list(wrapped.parameters.values()) == list(original.parameters.values())
    assert wrapped.return_annotation in ("torch.Tensor", torch.Tensor)
    assert wrapper.__name__ != full.__name__ and wrapper.__doc__


@pytest.mark.parametrize(("wrapper", "full", "field"), WRAPPERS)
def test_the_value_is_the_field_with_every_keyword(wrapper, full, field):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x, maps = torch.rand(4, 3, 4, 4), torch.rand(4, 4, 4)
    settings = {"channel_reduction": "sum", "internal_batch_size": 3, "apply_softmax": False}
    if full is not confidence_change:
        settings["steps"] = 5
    expected = getattr(full(model, x, maps, 2, **settings), field)
    assert torch.equal(wrapper(model, x, maps, 2, **settings), expected)
    assert torch.equal(wrapper(model, x, attributions=maps, target=2, **settings), expected)


@pytest.mark.parametrize(("wrapper", "full", "field"), WRAPPERS)
def test_an_unknown_keyword_is_refused_by_name(wrapper, full, field):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with pytest.raises(TypeError, match="stepz"):
        wrapper(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), stepz=3)


def test_the_decorator_keeps_the_wrappers_name_doc_and_return_annotation():
    def full(a: int, *, b: str = "x") -> tuple[int, str]:
        return a, b

    @takes_arguments_of(full)
    def second(*args, **kwargs) -> str:
        """The second field."""
        return full(*args, **kwargs)[1]

    assert second(1, b="y") == "y"
    assert second.__name__ == "second" and second.__doc__ == "The second field."
    signature = inspect.signature(second)
    assert list(signature.parameters) == ["a", "b"]
    assert signature.return_annotation == "str"
