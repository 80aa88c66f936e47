"""The torchmetrics Metric objects: each equals its function's mean over the batches it
saw, checks its settings with the function's errors, and syncs across gloo ranks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("torchmetrics")

from captum_regularized import metrics
from captum_regularized.metrics import torchmetrics as tm
from captum_regularized.models import SimpleCNN
from tests.distributed import run_distributed
from tests.model_checks import untouched

SIZES = (3, 1, 4)  # uneven batches
N = sum(SIZES)


def _model() -> SimpleCNN:
    torch.manual_seed(0)
    return SimpleCNN(num_classes=4, width=4).train()  # train mode: the metrics restore it


def _data(n: int = N, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.rand(n, 3, 8, 8, generator=gen),
        "maps": torch.randn(n, 3, 8, 8, generator=gen),
        "masks": torch.rand(n, 8, 8, generator=gen) > 0.5,
        "target": torch.randint(0, 4, (n,), generator=gen),
    }


# name -> (make the metric, update it with a batch, the function's per-example values)
Case = tuple[
    Callable[[Any], Any],
    Callable[[Any, dict[str, torch.Tensor]], None],
    Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
]

CASES: dict[str, Case] = {
    "DeletionAUC": (
        lambda m: tm.DeletionAUC(m, steps=5, substrate=0.25, internal_batch_size=7),
        lambda metric, b: metric.update(b["inputs"], b["maps"], target=b["target"]),
        lambda m, b: metrics.deletion_auc(m, b["inputs"], b["maps"], b["target"], steps=5,
                                          substrate=0.25),
    ),
    "InsertionAUC": (
        lambda m: tm.InsertionAUC(m, steps=4, channel_reduction="sum"),
        lambda metric, b: metric.update(b["inputs"], b["maps"], target=b["target"]),
        lambda m, b: metrics.insertion_auc(m, b["inputs"], b["maps"], b["target"], steps=4,
                                           channel_reduction="sum"),
    ),
    "AverageDrop": (
        lambda m: tm.AverageDrop(m),
        lambda metric, b: metric.update(b["inputs"], b["maps"]),  # predicted class
        lambda m, b: metrics.average_drop(m, b["inputs"], b["maps"]),
    ),
    "AverageGain": (
        lambda m: tm.AverageGain(m, channel_reduction="mean"),
        lambda metric, b: metric.update(b["inputs"], b["maps"], b["target"]),
        lambda m, b: metrics.average_gain(m, b["inputs"], b["maps"], b["target"],
                                          channel_reduction="mean"),
    ),
    "IncreaseInConfidence": (
        lambda m: tm.IncreaseInConfidence(m, apply_softmax=False),
        lambda metric, b: metric.update(b["inputs"], b["maps"], target=b["target"]),
        lambda m, b: metrics.increase_in_confidence(m, b["inputs"], b["maps"], b["target"],
                                                    apply_softmax=False),
    ),
    "AllegianceDeletionAUC": (
        lambda m: tm.AllegianceDeletionAUC(m, fill="white", fractions=(0.0, 0.25, 0.5)),
        lambda metric, b: metric.update(b["inputs"], b["maps"]),
        lambda m, b: metrics.allegiance_deletion_auc(
            m, b["inputs"], b["maps"], fill="white", fractions=(0.0, 0.25, 0.5)
        ).per_example_auc,
    ),
    "ROADCombined": (  # noise 0: the imputation is deterministic, so the two agree
        lambda m: tm.ROADCombined(m, percentiles=(20, 60), noise=0.0),
        lambda metric, b: metric.update(b["inputs"], b["maps"], target=b["target"]),
        lambda m, b: metrics.road(m, b["inputs"], b["maps"], b["target"], percentiles=(20, 60),
                                  noise=0.0).combined,
    ),
    "GradientAlignment": (
        lambda m: tm.GradientAlignment(m, rule="ungated"),
        lambda metric, b: metric.update(b["inputs"], target=b["target"]),
        lambda m, b: metrics.gradient_alignment(m, b["inputs"], b["target"], rule="ungated"),
    ),
    "PointingGame": (
        lambda m: tm.PointingGame(),
        lambda metric, b: metric.update(b["maps"], b["masks"]),
        lambda m, b: metrics.pointing_game(b["maps"], b["masks"]),
    ),
    "EnergyPointingGame": (
        lambda m: tm.EnergyPointingGame(channel_reduction="sum"),
        lambda metric, b: metric.update(b["maps"], b["masks"]),
        lambda m, b: metrics.energy_pointing_game(b["maps"], b["masks"], channel_reduction="sum"),
    ),
    "GiniSparseness": (
        lambda m: tm.GiniSparseness(),
        lambda metric, b: metric.update(b["maps"]),
        lambda m, b: metrics.gini_sparseness(b["maps"]),
    ),
}


def _batches(data: dict[str, torch.Tensor], sizes: tuple[int, ...]) -> list[dict]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [{k: v[s:s + n] for k, v in data.items()} for s, n in zip(starts, sizes)]


def test_every_metric_of_the_module_is_tested():
    assert set(CASES) == set(tm.__all__)


@pytest.mark.parametrize("name", list(CASES))
def test_equals_the_functions_mean_over_the_concatenated_batches(name: str):
    make, update, function = CASES[name]
    model, data = _model(), _data()
    metric = make(model)
    with untouched(model, *data.values()):
        for batch in _batches(data, SIZES):
            update(metric, batch)
        value = metric.compute()
    expected = function(model, data)
    assert expected.shape == (N,)
    assert metric.count == N
    assert value.dtype == torch.float32 and value.dim() == 0
    torch.testing.assert_close(value, expected.mean(), rtol=1e-5, atol=1e-6)
    # the mean of the per-batch means would differ for uneven batches: not what we compute
    assert isinstance(metric.higher_is_better, bool)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
@pytest.mark.parametrize("name", ["DeletionAUC", "GiniSparseness"])
def test_forward_gives_the_batch_value_and_accumulates(name: str):
    make, _, function = CASES[name]
    model, data = _model(), _data()
    metric = make(model)
    first, second = _batches(data, (5, 3))
    args = {"DeletionAUC": lambda b: (b["inputs"], b["maps"], b["target"]),
            "GiniSparseness": lambda b: (b["maps"],)}[name]
    batch_value = metric(*args(first))
    torch.testing.assert_close(batch_value, function(model, first).mean())
    metric(*args(second))
    torch.testing.assert_close(metric.compute(), function(model, data).mean())
    metric.reset()
    with pytest.raises(ValueError, match="no examples"):
        metric.compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_compute_refuses_a_metric_that_saw_no_example():
    metric = tm.GiniSparseness()
    with pytest.raises(ValueError, match="GiniSparseness has seen no examples"):
        metric.compute()
    metric.update(torch.zeros(0, 4))  # an empty batch adds nothing
    with pytest.raises(ValueError, match="no examples"):
        metric.compute()


def test_the_model_is_held_not_registered():
    model = _model()
    metric = tm.DeletionAUC(model, steps=4)
    assert list(metric.children()) == []
    assert not any(True for _ in metric.parameters())
    assert metric.forward_func is model
    assert metric.clone().forward_func is model  # a clone shares the model
    assert copy.deepcopy(metric).forward_func is model
    metric.update(*(_data(2)[k] for k in ("inputs", "maps")))
    assert metric.clone().count == 2  # ... and copies the states


def _function_error(function: Callable[[], Any]) -> tuple[type, str]:
    with pytest.raises((ValueError, TypeError)) as caught:
        function()
    return caught.type, str(caught.value)


x, m = torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8)
BAD_SETTINGS = {
    "steps": (lambda f: tm.DeletionAUC(f, steps=0),
              lambda f: metrics.deletion_auc(f, x, m, steps=0)),
    "substrate": (lambda f: tm.InsertionAUC(f, substrate="noise"),
                  lambda f: metrics.insertion_auc(f, x, m, substrate="noise")),
    "bool substrate": (lambda f: tm.DeletionAUC(f, substrate=True),
                       lambda f: metrics.deletion_auc(f, x, m, substrate=True)),
    "blur_sigma": (lambda f: tm.InsertionAUC(f, blur_sigma=0.0),
                   lambda f: metrics.insertion_auc(f, x, m, blur_sigma=0.0)),
    "internal_batch_size": (lambda f: tm.AverageDrop(f, internal_batch_size=0),
                            lambda f: metrics.average_drop(f, x, m, internal_batch_size=0)),
    "channel_reduction": (lambda f: tm.AverageGain(f, channel_reduction="median"),
                          lambda f: metrics.average_gain(f, x, m, channel_reduction="median")),
    "fractions": (lambda f: tm.AllegianceDeletionAUC(f, fractions=[0.5, 0.2]),
                  lambda f: metrics.allegiance_deletion_auc(f, x, m, fractions=[0.5, 0.2])),
    "fill": (lambda f: tm.AllegianceDeletionAUC(f, fill="grey"),
             lambda f: metrics.allegiance_deletion_auc(f, x, m, fill="grey")),
    "rule": (lambda f: tm.GradientAlignment(f, rule="relu"),
             lambda f: metrics.gradient_alignment(f, x, rule="relu")),
    "pointing channel_reduction": (
        lambda f: tm.PointingGame(channel_reduction="min"),
        lambda f: metrics.pointing_game(m, m > 0.5, channel_reduction="min"),
    ),
    "energy channel_reduction": (
        lambda f: tm.EnergyPointingGame(channel_reduction="min"),
        lambda f: metrics.energy_pointing_game(m, m > 0.5, channel_reduction="min"),
    ),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_the_functions_error_at_construction(name: str):
    build, call = BAD_SETTINGS[name]
    model = _model().eval()
    expected_type, expected_message = _function_error(lambda: call(model))
    with untouched(model), pytest.raises(expected_type) as caught:
        build(model)
    assert str(caught.value) == expected_message


def test_a_substrate_tensor_is_checked_against_the_images_at_update():
    model = _model()
    metric = tm.DeletionAUC(model, steps=4, substrate=torch.full((3, 1, 1), 0.5))
    data = _data(2)
    metric.update(data["inputs"], data["maps"])
    expected = metrics.deletion_auc(model, data["inputs"], data["maps"], steps=4, substrate=0.5)
    torch.testing.assert_close(metric.compute(), expected.mean())
    wrong = tm.DeletionAUC(model, substrate=torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="substrate tensor must broadcast"):
        wrong.update(data["inputs"], data["maps"])


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: tm.DeletionAUC(3), TypeError, "forward_func must be callable"),
        (lambda: tm.AverageDrop(None), TypeError, "forward_func must be callable"),
        (lambda: tm.GradientAlignment("model"), TypeError, "forward_func must be callable"),
        (lambda: tm.GiniSparseness(sync_every=2), ValueError, "sync_every"),
    ],
)
def test_bad_arguments_are_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_batches_get_the_functions_errors():
    model, data = _model(), _data(2)
    with pytest.raises(ValueError, match="NaN"):
        tm.DeletionAUC(model).update(data["inputs"] * torch.nan, data["maps"])
    with pytest.raises(TypeError, match="inputs"):
        tm.AverageDrop(model).update(data["inputs"].tolist(), data["maps"])
    with pytest.raises(ValueError, match="target"):
        tm.InsertionAUC(model, steps=2).update(data["inputs"], data["maps"], target=9)
    with pytest.raises(ValueError, match="masks"):
        tm.PointingGame().update(data["maps"], data["masks"][:, None, None])
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        tm.GradientAlignment(model).update(data["inputs"])


def test_forward_only_metrics_update_under_inference_mode():
    model, data = _model().eval(), _data(3)
    metric = tm.DeletionAUC(model, steps=3)
    with torch.inference_mode():
        metric.update(data["inputs"], data["maps"])
    metric.update(data["inputs"], data["maps"])  # and again outside
    expected = metrics.deletion_auc(model, data["inputs"], data["maps"], steps=3).mean()
    torch.testing.assert_close(metric.compute(), expected)


# ---------------------------------------------------------------- two gloo ranks

RANK_SIZES = ((3, 2), (1, 2))  # rank 0: 5 examples in two batches, rank 1: 3


def _shard(rank: int) -> dict[str, torch.Tensor]:
    data = _data()
    start = 0 if rank == 0 else sum(RANK_SIZES[0])
    return {k: v[start:start + sum(RANK_SIZES[rank])] for k, v in data.items()}


def _compute_on_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    model = _model()
    values = {}
    for name, (make, update, _) in CASES.items():
        metric = make(model)
        for batch in _batches(_shard(rank), RANK_SIZES[rank]):
            update(metric, batch)
        values[name] = metric.compute()
    return values


def test_two_gloo_ranks_give_the_single_process_value():
    model, data = _model(), _data()
    single = {}
    for name, (make, update, _) in CASES.items():
        metric = make(model)
        update(metric, data)
        single[name] = metric.compute()
    ranks = run_distributed(_compute_on_rank, world_size=2)
    for values in ranks:
        assert set(values) == set(CASES)
        for name, value in values.items():
            torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-6, msg=name)
