"""Small parts of the study: patch norms, the saturated wrapper, the CAM layer, table
formatting, the AdvGrad recipes and the model zoo's checkpoint cache."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from captum_regularized.models import SimpleCNN
from captum_regularized.study import TINY, model_zoo
from captum_regularized.study.model_zoo import (
    RECIPES,
    CifarResNet18,
    ModelZoo,
    ScaledLogits,
    TrainedModel,
    default_checkpoint_cache,
)
from captum_regularized.study.norm_adversarial_section import patch_norms
from captum_regularized.study.report import format_value
from captum_regularized.study.study_data import StudyData

# TINY with fewer images: the cache tests train a few models
SMALL = replace(TINY, train_samples=32, synthetic_train_samples=32, test_samples=8,
                finetune_samples=16)


@pytest.mark.parametrize("size, patch", [(8, 4), (7, 3), (5, 5)])
def test_patch_norms_match_a_loop(size, patch, device):
    gradient = torch.randn(2, 3, size, size, device=device)
    result = patch_norms(gradient, patch)
    blocks = math.ceil(size / patch)
    assert result.shape == (2, 1, blocks, blocks) and result.device == gradient.device
    for b in range(2):
        for i in range(blocks):
            for j in range(blocks):
                block = gradient[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                expected = block.square().sum().sqrt()
                assert result[b, 0, i, j] == pytest.approx(float(expected), rel=1e-5)


def test_patch_norms_of_a_single_pixel():
    gradient = torch.zeros(1, 2, 6, 6)
    gradient[0, :, 4, 1] = torch.tensor([3.0, 4.0])  # in the block of row 1, column 0
    result = patch_norms(gradient, 3)
    expected = torch.zeros(1, 1, 2, 2)
    expected[0, 0, 1, 0] = 5.0
    assert torch.equal(result, expected)


def test_scaled_logits_multiply_the_inner_model():
    inner = SimpleCNN(3, width=2).eval()
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(ScaledLogits(inner, 7.0)(x), 7.0 * inner(x))


def test_cam_layer_is_the_last_block():
    cnn = SimpleCNN(3, width=2)
    plain = TrainedModel("simple_cnn", 0, cnn, 0.5, 0.0, 0.5, 0.0, torch.ones(1))
    saturated = TrainedModel("saturated", 0, ScaledLogits(cnn, 2.0), 0.5, 0.0, 0.5, 0.0,
                             torch.ones(1))
    assert plain.cam_layer is cnn.block3 and saturated.cam_layer is cnn.block3
    net = CifarResNet18(3, width=2)
    assert TrainedModel("resnet", 0, net, 0.5, 0.0, 0.5, 0.0, torch.ones(1)).cam_layer \
        is net.layer4


def test_format_value_shows_spread_only_with_several_seeds():
    assert format_value({"mean": 0.25, "std": 0.05, "per_seed": [0.2, 0.3]}) == "0.250 ± 0.050"
    assert format_value({"mean": 0.25, "std": 0.0, "per_seed": [0.25]}) == "0.250"


def test_the_adversaries_are_built_with_the_authors_inner_loop():
    model = SimpleCNN(4, width=2)
    loss = RECIPES["adv_l1"].loss(model, TINY)
    assert loss.start == "zero" and loss.update_batchnorm is True
    assert loss.select_iterate == "last" and loss.steps == TINY.adv_steps
    assert loss.norm == "l1" and loss.spec.epsilon == TINY.adv_epsilon
    assert loss.step_size == pytest.approx(0.3 * TINY.adv_epsilon)
    assert loss.model is model
    net = RECIPES["adv_elastic_net"].loss(model, TINY)
    assert net.spec.epsilon2 == TINY.adv_epsilon2 == 0.05
    assert net.start == "zero" and net.select_iterate == "last" and net.update_batchnorm
    group = RECIPES["adv_group"].loss(model, TINY)
    assert group.spec.epsilon == TINY.adv_group_epsilon
    assert group.step_size == pytest.approx(0.3 * TINY.adv_group_epsilon)


# --- the checkpoint cache


def _zoo(settings=SMALL, cache=None) -> ModelZoo:
    return ModelZoo(settings, StudyData(settings), log=lambda line: None, progress=False,
                    cache=cache)


def _files(folder, recipe):
    return sorted(p.name for p in folder.glob(f"{recipe}-*.pt"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_default_checkpoint_cache_is_under_xdg_cache_home(tmp_path):
    assert default_checkpoint_cache() == tmp_path / "cache" / "captum_regularized" / "study"


def test_a_zoo_without_a_cache_writes_nothing(tmp_path):
    zoo = _zoo()
    trained = zoo.get("simple_cnn", 0)
    assert zoo.get("simple_cnn", 0) is trained and not trained.model.training
    assert trained.map_size == (8, 8) and 0.0 <= trained.accuracy <= 1.0
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_the_cache_keeps_one_checkpoint_per_model_and_loads_it(tmp_path, monkeypatch):
    cache = tmp_path / "checkpoints"
    first = _zoo(cache=cache)
    made = {name: first.get(name, 0) for name in ("simple_cnn", "simple_cnn_tuned")}
    first.get("saturated", 0)  # no training of its own: nothing to keep
    assert len(_files(cache, "simple_cnn")) == len(_files(cache, "simple_cnn_tuned")) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        _files(cache, "simple_cnn") + _files(cache, "simple_cnn_tuned"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(model_zoo, "train_classifier", no_training)
        second = _zoo(cache=cache)
        for name, trained in made.items():
            again = second.get(name, 0)
            assert again is not trained and _same_weights(again.model, trained.model), name
            assert again.train_seconds == trained.train_seconds, name
            assert again.history == trained.history and again.accuracy == trained.accuracy
            assert torch.equal(again.correct, trained.correct) and not again.model.training
        assert len(list(cache.iterdir())) == 2  # nothing new
        with pytest.raises(AssertionError, match="trained again"):
            second.get("simple_cnn", 1)  # another seed is another model

    # another scratch setting: both models are trained again, into new files
    longer = _zoo(replace(SMALL, epochs=2), cache=cache)
    longer.get("simple_cnn_tuned", 0)
    assert len(_files(cache, "simple_cnn")) == len(_files(cache, "simple_cnn_tuned")) == 2
    # another fine-tuning setting: only the fine-tuned model is new
    tuned = _zoo(replace(SMALL, finetune_lr=1e-3), cache=cache)
    tuned.get("simple_cnn_tuned", 0)
    assert len(_files(cache, "simple_cnn")) == 2
    assert len(_files(cache, "simple_cnn_tuned")) == 3


def test_a_setting_outside_training_keeps_the_checkpoint(tmp_path, monkeypatch):
    cache = tmp_path / "checkpoints"
    _zoo(cache=cache).get("simple_cnn", 0)
    monkeypatch.setattr(model_zoo, "train_classifier", None)  # calling it would fail
    other = _zoo(replace(SMALL, eval_examples=4, rsi_steps=2), cache=cache)
    assert other.get("simple_cnn", 0).model is not None
    assert len(list(cache.iterdir())) == 1


def test_a_damaged_checkpoint_is_trained_again_and_replaced(tmp_path):
    cache = tmp_path / "checkpoints"
    made = _zoo(cache=cache).get("simple_cnn", 0)
    (file,) = cache.iterdir()
    file.write_bytes(file.read_bytes()[:100])  # a run stopped while writing, or a bad disk
    again = _zoo(cache=cache).get("simple_cnn", 0)
    assert _same_weights(again.model, made.model)  # same seed, same training
    assert [p.name for p in cache.iterdir()] == [file.name]  # replaced, no partial file
    assert _same_weights(_zoo(cache=cache).get("simple_cnn", 0).model, made.model)
