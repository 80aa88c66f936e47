"""Lightning in the wider ecosystem: a picklable callback (``strategy="ddp_spawn"`` pickles
the callbacks), networks returning a Hugging Face ``ModelOutput`` or a logits dict, and
several validation dataloaders."""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from captum.attr import LayerGradCam, Saliency  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from captum_regularized import metrics  # noqa: E402
from captum_regularized.integrations.lightning import (  # noqa: E402
    ExplanationCallback,
    RegularizedClassifier,
)
from captum_regularized.models import SimpleCNN  # noqa: E402
from captum_regularized.regularizers import GradientNormPenalty  # noqa: E402
from tests.integrations.lightning_data import small_data as _data  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::UserWarning:captum.*"
)


def _trainer(tmp_path: Any, callbacks: list, **kwargs: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 1,
        "num_sanity_val_steps": 0, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False,
        "default_root_dir": tmp_path, "callbacks": callbacks,
    }
    settings.update(kwargs)
    return pl.Trainer(**settings)


def _fit(trainer: pl.Trainer, module: pl.LightningModule, val: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers advice, small log intervals
        torch.manual_seed(0)
        trainer.fit(module, DataLoader(_data(8, 0), batch_size=8), val)


# ---------------------------------------------------------------- a picklable callback


def _deletion(batch: metrics.MetricBatch) -> torch.Tensor:
    """A module-level metric (picklable): deletion AUC with few steps."""
    return metrics.deletion_auc(batch.model, batch.inputs, batch.attributions, batch.targets,
                                steps=8)


def _module(net: nn.Module | None = None, regularizer: Any = None) -> RegularizedClassifier:
    torch.manual_seed(0)
    return RegularizedClassifier(net if net is not None else SimpleCNN(3, width=4), regularizer,
                                 lr=1e-2)


def _explanations(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if k.startswith("explanations/")}


def test_the_callback_pickles_and_the_copy_logs_the_same_values(tmp_path):
    callback = ExplanationCallback(
        {"saliency": "Saliency", "grad-cam": LayerGradCam}, layer="net.block3", num_images=4,
        metrics={"deletion": _deletion, "gini": "gini_sparseness", "pointing": "pointing_game",
                 "drop": "average_drop"},
        attribute_kwargs={"grad-cam": {"relu_attributions": True}},
    )
    restored = pickle.loads(pickle.dumps(callback))
    val = DataLoader(_data(8, 1), batch_size=4)
    first, second = _module(), _module()
    trainer = _trainer(tmp_path, [callback])
    _fit(trainer, first, val)
    restored_trainer = _trainer(tmp_path, [restored])
    _fit(restored_trainer, second, val)
    logged = _explanations(trainer)
    assert len(logged) == 8 and logged == _explanations(restored_trainer)
    # and the values are the functions' own on the kept images (the reference)
    images, _, masks = (t[:4] for t in _data(8, 1).tensors)
    first.eval()
    targets = first(images).argmax(1)
    maps = {"saliency": Saliency(first).attribute(images.clone().requires_grad_(), target=targets),
            "grad-cam": LayerGradCam(first, first.net.block3).attribute(
                images, target=targets, relu_attributions=True)}
    for name, found in maps.items():
        expected = {
            "deletion": metrics.deletion_auc(first, images, found, targets, steps=8),
            "gini": metrics.gini_sparseness(found),
            "pointing": metrics.pointing_game(found, masks),
            "drop": metrics.average_drop(first, images, found, targets),
        }
        for metric, values in expected.items():
            assert logged[f"explanations/{name}/{metric}"] == pytest.approx(
                float(values.mean()), abs=1e-5), (name, metric)
    # after a fit too (the methods built on the module are not pickled: rebuilt when needed)
    again = pickle.loads(pickle.dumps(callback))
    torch.testing.assert_close(again.images, callback.images)
    assert again.explained_epochs == [0] and sorted(again.last_maps) == ["grad-cam", "saliency"]
    assert {k: float(v) for k, v in again.explain(first).items()} == pytest.approx(logged)


def test_the_default_callback_pickles():
    callback = ExplanationCallback({"saliency": Saliency})
    restored = pickle.loads(pickle.dumps(callback))
    assert list(restored.metrics) == list(callback.metrics) == [
        "deletion_auc", "insertion_auc", "gini_sparseness"]
    maps = torch.rand(2, 3, 8, 8)
    batch = metrics.MetricBatch(SimpleCNN(3, width=4), torch.rand(2, 3, 8, 8),
                                torch.tensor([0, 1]), torch.tensor([0, 1]), maps, None)
    torch.testing.assert_close(restored.metrics["gini_sparseness"](batch),
                               metrics.gini_sparseness(maps))


# ---------------------------------------------------------------- ModelOutput, dict, dataloaders


class _DictNet(nn.Module):
    """A classifier returning ``{"logits": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SimpleCNN(3, width=4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


class _HuggingFaceNet(_DictNet):
    """A classifier returning a transformers ``ImageClassifierOutput``."""

    def forward(self, x: torch.Tensor) -> Any:
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.net(x))


def _hand_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    output = net(images)
    return output["logits"] if isinstance(output, dict) else output.logits


@pytest.mark.parametrize(
    ("kind", "regularizer"),
    [("dict", None), ("ModelOutput", None), ("ModelOutput", GradientNormPenalty)],
)
def test_classifier_trains_and_validates_a_dict_or_model_output_on_two_loaders(
    tmp_path, kind: str, regularizer: Any
):
    if kind == "ModelOutput":
        pytest.importorskip("transformers")
    net = _DictNet() if kind == "dict" else _HuggingFaceNet()
    module = _module(net, regularizer)
    start = copy.deepcopy(net).train()
    train_images, train_labels, _ = _data(8, 0).tensors
    vals = [_data(8, 1), _data(6, 2)]
    callback = ExplanationCallback({"saliency": "Saliency"}, num_images=3,
                                   metrics=("gini_sparseness",))
    trainer = _trainer(tmp_path, [callback])
    _fit(trainer, module, [DataLoader(vals[0], batch_size=4), DataLoader(vals[1], batch_size=3)])
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())
    # one training step from the start: its loss is that of the starting weights
    with torch.no_grad():
        expected_train = F.cross_entropy(_hand_logits(start, train_images), train_labels)
    if regularizer is None:
        assert logged["train/loss"] == pytest.approx(float(expected_train), rel=1e-5)
    else:
        assert logged["train/cross_entropy"] == pytest.approx(float(expected_train), rel=1e-5)
        assert logged["train/loss"] > logged["train/cross_entropy"]
    # validation after the step, one value per loader (equal batches in each loader)
    net.eval()
    with torch.no_grad():
        for index, data in enumerate(vals):
            images, labels, _ = data.tensors
            logits = _hand_logits(net, images)
            loss = F.cross_entropy(logits, labels)
            accuracy = (logits.argmax(1) == labels).float().mean()
            assert logged[f"val/loss/dataloader_idx_{index}"] == pytest.approx(float(loss),
                                                                              rel=1e-5)
            assert logged[f"val/accuracy/dataloader_idx_{index}"] == pytest.approx(
                float(accuracy), abs=1e-6)
    assert "val/loss" not in logged
    # the callback explains the first loader's images, predicted class from the logits
    images = vals[0].tensors[0][:3]
    with torch.no_grad():
        targets = _hand_logits(net, images).argmax(1)
    maps = Saliency(lambda x: _hand_logits(net, x)).attribute(
        images.clone().requires_grad_(), target=targets)
    assert logged["explanations/saliency/gini_sparseness"] == pytest.approx(
        float(metrics.gini_sparseness(maps).mean()), abs=1e-5)


def test_classifier_still_validates_on_one_loader_with_plain_keys(tmp_path):
    module = _module()
    trainer = _trainer(tmp_path, [])
    _fit(trainer, module, DataLoader(_data(8, 1), batch_size=4))
    images, labels, _ = _data(8, 1).tensors
    module.eval()
    with torch.no_grad():
        loss = F.cross_entropy(module(images), labels)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(loss), rel=1e-5)
