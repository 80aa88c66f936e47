"""Dataset-level evaluation: equals per-batch calls, and the same under 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized.metrics import (
    BUILTIN_METRICS,
    MetricBatch,
    allegiance_deletion_auc,
    confidence_change,
    deletion_auc,
    energy_pointing_game,
    evaluate_dataset,
    gini_sparseness,
    gradient_alignment,
    insertion_auc,
    pointing_game,
    resolve_metrics,
)
from captum_regularized.models import SimpleCNN
from tests.distributed import run_distributed
from tests.model_checks import untouched


def _data(n: int = 7, with_masks: bool = True) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (n,), generator=generator)
    masks = torch.rand(n, 8, 8, generator=generator) > 0.5
    return TensorDataset(images, labels, masks) if with_masks else TensorDataset(images, labels)


def _model() -> SimpleCNN:
    torch.manual_seed(3)
    return SimpleCNN(num_classes=4, width=4).eval()


METRICS = ("deletion_auc", "gini_sparseness", "energy_pointing_game", "allegiance_deletion_auc")


def test_equals_per_batch_calls():
    model, data = _model(), _data()
    loader = DataLoader(data, batch_size=3)
    saliency = Saliency(model)
    result = evaluate_dataset(model, loader, saliency, METRICS[:3], target="label", progress=False)
    expected = {name: [] for name in METRICS[:3]}
    for images, labels, masks in loader:
        maps = saliency.attribute(images.clone().requires_grad_(), target=labels)
        expected["deletion_auc"].append(deletion_auc(model, images, maps, labels))
        expected["gini_sparseness"].append(gini_sparseness(maps))
        expected["energy_pointing_game"].append(energy_pointing_game(maps, masks))
    for name, pieces in expected.items():
        torch.testing.assert_close(result.per_example[name], torch.cat(pieces))
        assert result.means[name] == pytest.approx(float(torch.cat(pieces).mean()))


def test_every_builtin_metric_equals_its_function():
    model, data = _model(), _data(4)
    loader = DataLoader(data, batch_size=2)
    saliency = Saliency(model)
    result = evaluate_dataset(model, loader, saliency, list(BUILTIN_METRICS), progress=False)
    functions = {
        "deletion_auc": lambda x, m, t, s: deletion_auc(model, x, m, t),
        "insertion_auc": lambda x, m, t, s: insertion_auc(model, x, m, t),
        "average_drop": lambda x, m, t, s: confidence_change(model, x, m, t).drop,
        "average_gain": lambda x, m, t, s: confidence_change(model, x, m, t).gain,
        "increase_in_confidence": lambda x, m, t, s: confidence_change(model, x, m, t).increase,
        "allegiance_deletion_auc": lambda x, m, t, s: allegiance_deletion_auc(
            model, x, m
        ).per_example_auc,
        "gini_sparseness": lambda x, m, t, s: gini_sparseness(m),
        "pointing_game": lambda x, m, t, s: pointing_game(m, s),
        "energy_pointing_game": lambda x, m, t, s: energy_pointing_game(m, s),
        "gradient_alignment": lambda x, m, t, s: gradient_alignment(model, x, t),
    }
    assert set(functions) == set(BUILTIN_METRICS)
    for name, function in functions.items():
        pieces = []
        for images, _, masks in loader:
            targets = model(images).argmax(1)
            maps = saliency.attribute(images.clone().requires_grad_(), target=targets)
            pieces.append(function(images, maps, targets, masks))
        torch.testing.assert_close(result.per_example[name], torch.cat(pieces), msg=name)


def test_custom_metrics_callables_and_predicted_targets():
    model, data = _model(), _data(with_masks=False)
    seen = []

    def record_targets(batch: MetricBatch) -> torch.Tensor:
        seen.append(batch.targets)
        return batch.targets.float()

    result = evaluate_dataset(
        model,
        DataLoader(data, batch_size=4),
        lambda images, targets: images * 0 + 1,  # a plain callable method
        {"targets": record_targets, "gini": "gini_sparseness"},
        progress=False,
    )
    predicted = model(data.tensors[0]).argmax(1)
    assert result.per_example["targets"].long().tolist() == predicted.tolist()
    assert result.per_example["gini"].tolist() == [0.0] * 7  # constant maps


def test_model_left_as_found_and_gradient_alignment_without_a_method():
    model = SimpleCNN(num_classes=4, width=4).train()
    loader = DataLoader(_data(4), batch_size=2)
    with untouched(model):
        result = evaluate_dataset(model, loader, None, ["gradient_alignment"], progress=False)
    assert result.per_example["gradient_alignment"].shape == (4,)


def test_clear_errors():
    model = _model()
    loader = DataLoader(_data(4, with_masks=False), batch_size=2)
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        evaluate_dataset(model, loader, Saliency(model), ["dice"], progress=False)
    with pytest.raises(ValueError, match="masks"):
        evaluate_dataset(model, loader, Saliency(model), ["pointing_game"], progress=False)
    with pytest.raises(ValueError, match="needs attribution maps"):
        evaluate_dataset(model, loader, None, ["deletion_auc"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate_dataset(model, DataLoader(_data(0), batch_size=2), None, ["gradient_alignment"],
                         progress=False)
    with pytest.raises(ValueError, match="distributed=True"):
        evaluate_dataset(model, loader, Saliency(model), ["gini_sparseness"], distributed=True,
                         progress=False)
    assert set(METRICS) <= set(BUILTIN_METRICS)


def test_resolve_metrics_reads_names_mappings_and_callables():
    def custom(batch: MetricBatch) -> torch.Tensor:
        return batch.targets.float()

    by_name = resolve_metrics(["gini_sparseness", "deletion_auc"])
    assert list(by_name) == ["gini_sparseness", "deletion_auc"]
    assert by_name["deletion_auc"] is BUILTIN_METRICS["deletion_auc"]
    mixed = resolve_metrics({"mine": custom, "sparsity": "gini_sparseness"})
    assert mixed == {"mine": custom, "sparsity": BUILTIN_METRICS["gini_sparseness"]}
    with pytest.raises(TypeError, match="not one string"):
        resolve_metrics("gini_sparseness")
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        resolve_metrics({"x": "dice"})
    with pytest.raises(TypeError, match="metric 'x' must be a name or a callable"):
        resolve_metrics({"x": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one metric"):
        resolve_metrics([])


def _evaluate_on_rank(rank: int, world_size: int) -> dict:
    model, data = _model(), _data()
    saliency, explained = Saliency(model), []

    def counting_saliency(images, targets):
        explained.append(images.detach().clone())
        return saliency.attribute(images, target=targets)

    result = evaluate_dataset(
        model, DataLoader(data, batch_size=2), counting_saliency, METRICS, progress=False
    )
    return {"means": result.means, "per_example": result.per_example,
            "explained": torch.cat(explained)}


def test_two_gloo_ranks_equal_one_process():
    single = evaluate_dataset(
        _model(), DataLoader(_data(), batch_size=2), Saliency(_model()), METRICS, progress=False
    )
    ranks = run_distributed(_evaluate_on_rank, world_size=2)
    # Each rank explains only its shard: items 0, 2, 4, 6 and 1, 3, 5 + item 0 as padding.
    images = _data().tensors[0]
    torch.testing.assert_close(ranks[0]["explained"], images[[0, 2, 4, 6]])
    torch.testing.assert_close(ranks[1]["explained"], images[[1, 3, 5, 0]])
    for result in ranks:  # 7 examples: rank 0 gets 4, rank 1 gets 3 + 1 padding
        for name in METRICS:
            torch.testing.assert_close(
                result["per_example"][name], single.per_example[name], atol=1e-5, rtol=1e-4
            )
            assert result["means"][name] == pytest.approx(single.means[name], abs=1e-5)
