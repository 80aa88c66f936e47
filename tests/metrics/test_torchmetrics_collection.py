"""Our metric objects in a ``torchmetrics.MetricCollection``: each member gives what it gives
alone, also with torchmetrics' default ``compute_groups=True``.

torchmetrics puts metrics whose states are equal after the collection's first update in one
compute group: only the group's first member is updated from then on, the others share its
states. The first batch here makes the states of eight members coincide (zero sums over three
examples: constant maps, empty masks, targets whose confidence the masked image lowers), so a
collection that merged metrics on equal states would report one metric's value for another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("torchmetrics")

from torchmetrics import MetricCollection

from captum_regularized import metrics
from captum_regularized.metrics import torchmetrics as tm
from captum_regularized.models import SimpleCNN

Batch = dict[str, torch.Tensor]


def _models() -> tuple[SimpleCNN, SimpleCNN]:
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=4, width=4).eval()
    torch.manual_seed(1)
    return model, SimpleCNN(num_classes=4, width=4).eval()


def _members(model: SimpleCNN, other: SimpleCNN) -> dict[str, Callable[[], Any]]:
    """Every metric class, and same-class members that differ in settings or model."""
    return {
        "deletion": lambda: tm.DeletionAUC(model, steps=5),
        "insertion": lambda: tm.InsertionAUC(model, steps=4),
        "drop": lambda: tm.AverageDrop(model),
        "gain": lambda: tm.AverageGain(model),
        "increase": lambda: tm.IncreaseInConfidence(model),
        "increase_logits": lambda: tm.IncreaseInConfidence(model, apply_softmax=False),
        "increase_other_model": lambda: tm.IncreaseInConfidence(other),
        "allegiance": lambda: tm.AllegianceDeletionAUC(model, fractions=(0.0, 0.25, 0.5)),
        "alignment": lambda: tm.GradientAlignment(model),
        "road": lambda: tm.ROADCombined(model, percentiles=(25, 75), noise=0.0),
        "pointing": lambda: tm.PointingGame(),
        "pointing_sum": lambda: tm.PointingGame(channel_reduction="sum"),
        "energy": lambda: tm.EnergyPointingGame(),
        "gini": lambda: tm.GiniSparseness(),
    }


def _reference(model: SimpleCNN, other: SimpleCNN, b: Batch) -> dict[str, torch.Tensor]:
    """The functions' per-example values on the batch ``b`` (the independent reference)."""
    x, maps, masks, target = b["inputs"], b["attributions"], b["masks"], b["target"]
    return {
        "deletion": metrics.deletion_auc(model, x, maps, target, steps=5),
        "insertion": metrics.insertion_auc(model, x, maps, target, steps=4),
        "drop": metrics.average_drop(model, x, maps, target),
        "gain": metrics.average_gain(model, x, maps, target),
        "increase": metrics.increase_in_confidence(model, x, maps, target),
        "increase_logits": metrics.increase_in_confidence(model, x, maps, target,
                                                          apply_softmax=False),
        "increase_other_model": metrics.increase_in_confidence(other, x, maps, target),
        "allegiance": metrics.allegiance_deletion_auc(
            model, x, maps, fractions=(0.0, 0.25, 0.5)).per_example_auc,
        "alignment": metrics.gradient_alignment(model, x, target),
        "road": metrics.road(model, x, maps, target, percentiles=(25, 75), noise=0.0).combined,
        "pointing": metrics.pointing_game(maps, masks),
        "pointing_sum": metrics.pointing_game(maps, masks, channel_reduction="sum"),
        "energy": metrics.energy_pointing_game(maps, masks),
        "gini": metrics.gini_sparseness(maps),
    }


def _first_batch(model: SimpleCNN, other: SimpleCNN) -> Batch:
    """Three images with constant maps (masked image: black), empty masks, and per image a
    target whose confidence the black image does not raise, for both models and with and
    without softmax: gain, increase, pointing, energy and Gini are all zero."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    with torch.no_grad():
        lowered = torch.ones(3, 4, dtype=torch.bool)
        for net in (model, other):
            clean, black = net(x), net(torch.zeros_like(x))
            lowered &= black <= clean
            lowered &= black.softmax(1) <= clean.softmax(1)
    assert bool(lowered.any(1).all()), "every image needs a class that the black image lowers"
    return {
        "inputs": x,
        "attributions": torch.ones(3, 3, 8, 8),
        "masks": torch.zeros(3, 8, 8, dtype=torch.bool),
        "target": lowered.int().argmax(1),
    }


def _later_batches() -> list[Batch]:
    gen = torch.Generator().manual_seed(6)
    batches = []
    for size in (4, 2):
        batches.append({
            "inputs": torch.rand(size, 3, 8, 8, generator=gen),
            "attributions": torch.randn(size, 3, 8, 8, generator=gen),
            "masks": torch.rand(size, 8, 8, generator=gen) > 0.5,
            "target": torch.randint(0, 4, (size,), generator=gen),
        })
    return batches


def _cat(batches: list[Batch]) -> Batch:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_every_member_of_a_default_collection_equals_the_metric_alone():
    model, other = _models()
    members = _members(model, other)
    batches = [_first_batch(model, other), *_later_batches()]
    first = _reference(model, other, batches[0])
    zero = {name for name, values in first.items() if float(values.sum()) == 0}
    # their states coincide after the first update: (0.0, 3)
    assert zero == {"gain", "increase", "increase_logits", "increase_other_model", "pointing",
                    "pointing_sum", "energy", "gini"}
    collection = MetricCollection({name: make() for name, make in members.items()})
    assert collection._enable_compute_groups is True  # torchmetrics' default
    alone = {name: make() for name, make in members.items()}
    for batch in batches:
        collection.update(**batch)  # each member takes the keyword arguments it names
        for metric in alone.values():
            metric.update(**metric._filter_kwargs(**batch))
    values = collection.compute()
    reference = _reference(model, other, _cat(batches))
    assert set(values) == set(members)
    for name, value in values.items():
        torch.testing.assert_close(value, alone[name].compute(), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(value, reference[name].mean(), rtol=1e-5, atol=1e-6, msg=name)
    # no two of these members were put in one compute group
    assert sorted(len(group) for group in collection.compute_groups.values()) == [1] * len(members)


def test_identical_members_still_share_their_updates():
    """A clone has the states of its original: torchmetrics may share its updates, and the
    value is still right."""
    model, other = _models()
    deletion = tm.DeletionAUC(model, steps=5)
    collection = MetricCollection({
        "deletion": deletion, "copy": deletion.clone(), "gini": tm.GiniSparseness(),
    })
    batches = _later_batches()
    for batch in batches:
        collection.update(**batch)
    assert sorted(map(sorted, collection.compute_groups.values())) == [["copy", "deletion"],
                                                                       ["gini"]]
    reference = _reference(model, other, _cat(batches))
    values = collection.compute()
    for name, key in (("deletion", "deletion"), ("copy", "deletion"), ("gini", "gini")):
        torch.testing.assert_close(values[name], reference[key].mean(), msg=name)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_state_dict_and_merge_state_use_the_names_total_and_count():
    """The states of every instance are distinct attributes, but read, saved, loaded and
    merged as ``total`` and ``count``."""
    first, second = tm.GiniSparseness(), tm.GiniSparseness()
    first.update(torch.tensor([[0.0, 0.0, 0.0, 5.0]]))  # Gini 0.75
    second.update(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]]))  # 0 and 0.5
    assert (float(first.total), int(first.count)) == (0.75, 1)
    first.persistent(True)
    saved = first.state_dict()
    assert sorted(saved) == ["count", "total"]
    fresh = tm.GiniSparseness()
    fresh.load_state_dict(saved)
    assert (float(fresh.total), int(fresh.count)) == (0.75, 1)
    fresh.merge_state(second)
    torch.testing.assert_close(fresh.compute(), torch.tensor((0.75 + 0.0 + 0.5) / 3))
    first.merge_state({"total": torch.tensor(0.5), "count": torch.tensor(2)})
    torch.testing.assert_close(first.compute(), torch.tensor(1.25 / 3))
    with pytest.raises(ValueError, match="GiniSparseness"):
        first.merge_state(tm.DeletionAUC(_models()[0]))
