"""Contract: every entry that runs a model takes one returning a Hugging Face
``ModelOutput`` or a dict with key ``"logits"``, and gives the tensor model's results;
any other output is a ``TypeError`` that says what is accepted."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch

from tests.contracts.registry import ContractNet, Entry, make_batch, make_model, output_tensors
from tests.contracts.registry import select as select_entries
from tests.model_checks import untouched

try:  # the real class when transformers is installed, else the same duck type
    from transformers.modeling_outputs import ImageClassifierOutput as HubOutput
except ImportError:  # pragma: no cover - depends on the environment

    class HubOutput(OrderedDict):  # type: ignore[no-redef]
        """An ``OrderedDict`` with a ``.logits`` attribute, like transformers' ModelOutput."""

        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__(logits=logits)
            self.logits = logits


WITH_MODEL = select_entries(lambda e: e.uses_model)


class DictNet(ContractNet):
    """The contract model returning ``{"logits": ..., "features": ...}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x), "features": x.flatten(1)}


class HubNet(ContractNet):
    """The contract model returning a ModelOutput (``ImageClassifierOutput``)."""

    def forward(self, x: torch.Tensor) -> Any:
        return HubOutput(logits=super().forward(x))


class TupleNet(ContractNet):
    def forward(self, x: torch.Tensor) -> Any:
        return super().forward(x), x


class WrongKeyNet(ContractNet):
    def forward(self, x: torch.Tensor) -> Any:
        return {"scores": super().forward(x)}


def _same_weights(cls: type[ContractNet]) -> ContractNet:
    """``cls`` with the weights, frozen flag and mode of :func:`make_model`."""
    reference = make_model()
    model = cls()
    model.load_state_dict(reference.state_dict())
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return model.eval()


def _run(entry: Entry, model: torch.nn.Module) -> list[torch.Tensor]:
    torch.manual_seed(0)  # entries that draw random numbers draw the same ones
    return output_tensors(entry.call(model, make_batch(), None))


@pytest.mark.parametrize("entry", WITH_MODEL)
@pytest.mark.parametrize("cls", [DictNet, HubNet], ids=["dict", "ModelOutput"])
def test_dict_and_model_output_give_the_tensor_models_results(entry: Entry, cls):
    expected = _run(entry, make_model())
    model = _same_weights(cls)
    with untouched(model):
        got = _run(entry, model)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert isinstance(g, torch.Tensor)
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("entry", WITH_MODEL)
@pytest.mark.parametrize("cls", [TupleNet, WrongKeyNet], ids=["tuple", "dict-without-logits"])
def test_other_outputs_are_a_type_error_saying_what_is_accepted(entry: Entry, cls):
    model = _same_weights(cls)
    batch = make_batch()
    kind = "tuple" if cls is TupleNet else r"dict with keys \['scores'\]"
    with untouched(model, batch.inputs), pytest.raises(TypeError, match=rf"'logits'.*{kind}"):
        entry.call(model, batch, None)


def test_hub_output_is_a_mapping_with_logits():
    out = _same_weights(HubNet)(torch.rand(2, 3, 8, 8))
    assert isinstance(out, OrderedDict) and out.logits.shape == (2, 3)
