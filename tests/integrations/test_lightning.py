"""The Lightning callback and the regularized training step, run by a real Trainer on CPU."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from captum.attr import LayerGradCam, Saliency  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from captum_regularized import attr, metrics  # noqa: E402
from captum_regularized.integrations.lightning import (  # noqa: E402
    ExplanationCallback,
    RegularizedClassifier,
    RegularizedTrainingStep,
    split_batch,
)
from captum_regularized.models import SimpleCNN  # noqa: E402
from captum_regularized.regularizers import (  # noqa: E402
    GradientNormPenalty,
    GuidedGradientRegularizer,
    NormRegularizedAdversarialLoss,
)
from tests.distributed import run_distributed  # noqa: E402
from tests.integrations.lightning_data import small_data as _data  # noqa: E402
from tests.model_checks import untouched  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::UserWarning:captum.*"
)


def _deletion(batch: metrics.MetricBatch) -> torch.Tensor:
    """Deletion AUC with few steps (the default 100 are slow on the CPU)."""
    return metrics.deletion_auc(batch.model, batch.inputs, batch.attributions, batch.targets,
                                steps=8)


def _module(regularizer: Any = None, **kwargs: Any) -> RegularizedClassifier:
    torch.manual_seed(0)
    return RegularizedClassifier(SimpleCNN(3, width=4), regularizer, lr=1e-2, **kwargs)


class _Writer:
    """Stands in for TensorBoard's SummaryWriter: records ``add_figure`` calls."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, Any, int]] = []

    def add_figure(self, tag: str, figure: Any, global_step: int) -> None:
        self.figures.append((tag, figure, global_step))


class RecordingLogger(Logger):
    """A logger that keeps every logged dict and has a figure-taking experiment."""

    def __init__(self, with_writer: bool = True) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []
        self.writer = _Writer() if with_writer else object()

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> Any:
        return self.writer

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append(dict(metrics))


class _InferenceModeProbe(pl.Callback):
    """Records ``(inference mode, grad enabled)`` at the end of each validation epoch."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))


def _fit(tmp_path, module, epochs: int, callbacks: list, logger: Any = False) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2,
        limit_val_batches=2, enable_checkpointing=False, logger=logger, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=1,
    )
    train = DataLoader(_data(16, 0), batch_size=8, shuffle=True)
    val = DataLoader(_data(8, 1), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers advice, small log intervals
        torch.manual_seed(0)  # the same shuffling in every run
        trainer.fit(module, train, val)
    return trainer


def test_callback_explains_on_the_right_epochs_and_logs_the_functions_values(tmp_path):
    module = _module()
    callback = ExplanationCallback(
        {"saliency": Saliency, "grad-cam": "LayerGradCam",
         "positive": lambda x, t: attr.PositiveSaliency(module).attribute(x, target=t)},
        every_n_epochs=2, num_images=6, layer="net.block3",
        metrics={"deletion_auc": _deletion, "gini_sparseness": "gini_sparseness",
                 "pointing_game": "pointing_game"},
    )
    logger, probe = RecordingLogger(), _InferenceModeProbe()
    _fit(tmp_path, module, 2, [probe, callback], logger)
    assert probe.seen == [(False, False)] * 3  # sanity check and 2 epochs, under no_grad
    assert callback.explained_epochs == [1]  # epochs 0 and 1 with every_n_epochs=2
    # the first six validation images, over two batches of four (the sanity check's
    # batch is not kept)
    val_images, _, val_masks = _data(8, 1).tensors
    torch.testing.assert_close(callback.images, val_images[:6])
    # epoch 1 was the last: the explained weights are the final ones
    module.eval()
    images = val_images[:6].clone().requires_grad_()
    targets = module(images).argmax(1)
    maps = {
        "saliency": Saliency(module).attribute(images, target=targets),
        "grad-cam": LayerGradCam(module, module.net.block3).attribute(images, target=targets),
        "positive": attr.PositiveSaliency(module).attribute(images, target=targets),
    }
    logged = {k: v for d in logger.logged for k, v in d.items() if k.startswith("explanations/")}
    assert sum(any(k.startswith("explanations/") for k in d) for d in logger.logged) == 1
    assert set(logged) == {
        f"explanations/{m}/{s}" for m in maps
        for s in ("deletion_auc", "gini_sparseness", "pointing_game")
    }
    for name, expected in maps.items():
        torch.testing.assert_close(callback.last_maps[name], expected.detach())
        values = {
            "deletion_auc": metrics.deletion_auc(module, images.detach(), expected, targets,
                                                 steps=8),
            "gini_sparseness": metrics.gini_sparseness(expected),
            "pointing_game": metrics.pointing_game(expected, val_masks[:6]),
        }
        for metric, value in values.items():
            assert logged[f"explanations/{name}/{metric}"] == pytest.approx(
                float(value.mean()), abs=1e-5
            ), (name, metric)
    assert [tag for tag, _, _ in logger.writer.figures] == ["explanations"]


def test_callback_leaves_training_as_it_would_be_without_it(tmp_path):
    plain, explained = _module(), _module()
    _fit(tmp_path, plain, 2, [])
    callback = ExplanationCallback(
        {"guided": attr.GuidedBackprop,
         "random": lambda x, t: torch.rand_like(x)},  # draws from the global generator
        num_images=4, metrics=("average_drop",),
    )
    _fit(tmp_path, explained, 2, [callback])
    assert callback.explained_epochs == [0, 1]
    for (name, a), (_, b) in zip(plain.state_dict().items(), explained.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # BatchNorm stats included


def test_trainer_validate_runs_under_inference_mode_and_explain_leaves_the_model_as_found(
    tmp_path,
):
    module = _module()
    callback = ExplanationCallback({"saliency": Saliency}, num_images=3,
                                   metrics={"deletion": _deletion, "gini": "gini_sparseness"})
    probe = _InferenceModeProbe()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[probe, callback], limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(module, DataLoader(_data(8, 1), batch_size=4))
    assert probe.seen == [(True, False)]  # Trainer.validate: torch.inference_mode()
    assert callback.explained_epochs == [0]
    assert "explanations/saliency/gini" in trainer.callback_metrics
    module.train()
    module.net.stem[0].weight.requires_grad_(False)
    for parameter in module.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    grads = {n: p.grad for n, p in module.named_parameters()}
    with untouched(module, callback.images), torch.inference_mode():
        means = callback.explain(module, trainer)
    assert sorted(means) == ["explanations/saliency/deletion", "explanations/saliency/gini"]
    for key, value in means.items():  # validate() trained nothing: the same values again
        torch.testing.assert_close(value, trainer.callback_metrics[key])
    for name, parameter in module.named_parameters():
        assert parameter.grad is grads[name] and bool((parameter.grad == 0.5).all())
    empty = ExplanationCallback({"saliency": Saliency})
    assert empty.explain(module, trainer) == {}  # no images kept: nothing logged


def test_a_failing_method_leaves_the_model_as_found():
    module = _module()

    def broken(images, targets):
        module(images).sum().backward()  # would write .grad if parameters were not frozen
        raise KeyError("broken method")

    callback = ExplanationCallback({"broken": broken}, num_images=2)
    callback.images, callback._labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    module.train()
    with untouched(module), pytest.raises(KeyError, match="broken method"):
        callback.explain(module)
    assert all(p.grad is None for p in module.parameters())


def test_no_figure_without_a_logger_that_takes_figures(tmp_path):
    callback = ExplanationCallback({"saliency": Saliency}, num_images=2, metrics=())
    logger = RecordingLogger(with_writer=False)
    _fit(tmp_path, _module(), 1, [callback], logger)
    assert callback.explained_epochs == [0] and "saliency" in callback.last_maps
    assert not any(k.startswith("explanations/") for d in logger.logged for k in d)


def test_callback_settings_are_checked():
    with pytest.raises(TypeError, match="methods"):
        ExplanationCallback({})
    with pytest.raises(TypeError, match=r"methods\['x'\]"):
        ExplanationCallback({"x": 3})
    with pytest.raises(ValueError, match="every_n_epochs"):
        ExplanationCallback({"s": Saliency}, every_n_epochs=0)
    with pytest.raises(ValueError, match="num_images"):
        ExplanationCallback({"s": Saliency}, num_images=True)
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        ExplanationCallback({"s": Saliency}, metrics=["dice"])
    with pytest.raises(TypeError, match="not one string"):
        ExplanationCallback({"s": Saliency}, metrics="gini_sparseness")
    with pytest.raises(ValueError, match="target"):
        ExplanationCallback({"s": Saliency}, target="random")
    with pytest.raises(ValueError, match=r"attribute_kwargs.*\['t'\]"):
        ExplanationCallback({"s": Saliency}, attribute_kwargs={"t": {}})
    with pytest.raises(TypeError, match="batch_to_images"):
        ExplanationCallback({"s": Saliency}, batch_to_images="first")
    layer_method = ExplanationCallback({"cam": LayerGradCam})
    with pytest.raises(ValueError, match="layer method; pass layer="):
        layer_method.setup(None, _module(), "fit")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch_to_images"):
        split_batch({"image": torch.rand(1, 3, 8, 8)})


# ---------------------------------------------------------------- training


def test_regularized_loss_is_cross_entropy_plus_the_penalty():
    module = _module(GuidedGradientRegularizer, regularizer_kwargs={"weight": 0.5})
    images, labels, _ = _data(4, 2).tensors
    parts = module.regularized_loss(images, labels)
    reference = copy.deepcopy(module.net)
    logits, penalty = GuidedGradientRegularizer(reference, weight=0.5)(images, labels)
    expected = F.cross_entropy(logits, labels) + penalty
    torch.testing.assert_close(parts.loss, expected)
    torch.testing.assert_close(parts.penalty, penalty.detach())
    assert float(parts.penalty) > 0
    # the penalty is in the graph: the weights' gradient is not cross-entropy's alone
    parts.loss.backward()
    with_penalty = module.net.classifier.weight.grad.clone()
    module.zero_grad()
    F.cross_entropy(module(images), labels).backward()
    assert not torch.allclose(with_penalty, module.net.classifier.weight.grad)


def test_trainer_trains_through_the_penalty_and_logs_its_parts(tmp_path):
    plain, regularized = _module(), _module(GuidedGradientRegularizer,
                                            regularizer_kwargs={"weight": 1.0})
    _fit(tmp_path, plain, 1, [])
    logger = RecordingLogger()
    trainer = _fit(tmp_path, regularized, 1, [], logger)
    logged = trainer.logged_metrics
    assert {"train/loss", "train/cross_entropy", "train/penalty", "train/accuracy",
            "train/cosine", "val/loss", "val/accuracy"} <= set(logged)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logged.values())
    assert float(logged["train/loss"]) == pytest.approx(
        float(logged["train/cross_entropy"]) + float(logged["train/penalty"]), rel=1e-5)
    # same start, same batches: only the penalty's gradient can make the weights differ
    moved = [not torch.equal(a, b) for a, b in
             zip(plain.net.parameters(), regularized.net.parameters())]
    assert any(moved)


def test_other_regularizers_and_the_mixin_form():
    images, labels, masks = _data(4, 3).tensors
    gaze = _module(GradientNormPenalty, regularizer_kwargs={"norm": "gaze", "epsilon": 0.1})
    parts = gaze.regularized_loss(images, labels, masks)
    _, penalty = GradientNormPenalty(copy.deepcopy(gaze.net), norm="gaze", epsilon=0.1)(
        images, labels, mask=masks[:, None].float())
    torch.testing.assert_close(parts.penalty, penalty.detach())
    with pytest.raises(ValueError, match=r"gaze.*masks"):
        gaze.regularized_loss(images, labels)
    adversarial = _module(NormRegularizedAdversarialLoss, regularizer_kwargs={"epsilon": 0.05})
    parts = adversarial.regularized_loss(images, labels)  # the same convention
    assert parts.logits.shape == (len(images), 3) and parts.loss.requires_grad
    assert float(parts.penalty) > 0  # the adversarial excess over the clean loss
    torch.testing.assert_close(parts.loss.detach(), parts.cross_entropy + parts.penalty)

    class Custom(RegularizedTrainingStep):  # the mixin on a module of one's own
        def __init__(self) -> None:
            super().__init__()
            self.net = SimpleCNN(3, width=4)

        def forward(self, x):
            return self.net(x)

    plain = Custom()  # regularizer None: plain cross-entropy
    torch.testing.assert_close(plain.regularized_loss(images, labels).loss,
                               F.cross_entropy(plain(images), labels))
    plain.regularizer = lambda x, y: F.cross_entropy(plain(x), y)  # a loss hook: no logits
    parts = plain.regularized_loss(images, labels)
    assert parts.logits is None and parts.penalty is None and parts.loss.requires_grad
    plain.regularizer = lambda x, y: "not a pair"
    with pytest.raises(TypeError, match=r"\(logits, penalty\) pair"):
        plain.regularized_loss(images, labels)


def test_classifier_arguments_are_checked():
    net = SimpleCNN(3, width=4)
    with pytest.raises(ValueError, match="another model"):
        RegularizedClassifier(net, GuidedGradientRegularizer(SimpleCNN(3, width=4)))
    with pytest.raises(ValueError, match="regularizer_kwargs"):
        RegularizedClassifier(net, GuidedGradientRegularizer(net), regularizer_kwargs={})
    with pytest.raises(TypeError, match="net"):
        RegularizedClassifier("net")
    with pytest.raises(ValueError, match="lr"):
        RegularizedClassifier(net, lr=0.0)
    with pytest.raises(TypeError, match="regularizer must be callable"):
        RegularizedClassifier(net, 3)


# ---------------------------------------------------------------- two DDP processes


def _fit_on_rank(rank: int, world_size: int, root: str) -> dict[str, Any]:
    import os

    os.environ["LOCAL_RANK"] = str(rank)  # the processes exist already (as under torchrun)
    module = _module(GuidedGradientRegularizer, regularizer_kwargs={"weight": 0.5})
    callback = ExplanationCallback({"saliency": Saliency}, num_images=3,
                                   metrics={"deletion": _deletion, "gini": "gini_sparseness"})
    trainer = pl.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp", max_epochs=1,
        limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        num_sanity_val_steps=0, callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        trainer.fit(module, DataLoader(_data(16, 0), batch_size=4),
                    DataLoader(_data(8, 1), batch_size=4))
    return {
        "images": callback.images,
        "logged": {k: v.cpu() for k, v in trainer.callback_metrics.items()},
        "state": {k: v.cpu() for k, v in module.state_dict().items()},
    }


def test_two_ddp_processes_log_the_mean_over_both_ranks_images(tmp_path):
    ranks = run_distributed(_fit_on_rank, str(tmp_path), world_size=2, timeout_s=180)
    val_images = _data(8, 1).tensors[0]
    # the DistributedSampler deals the items out in turn: rank 0 gets 0, 2, 4, rank 1 1, 3, 5
    torch.testing.assert_close(ranks[0]["images"], val_images[[0, 2, 4]])
    torch.testing.assert_close(ranks[1]["images"], val_images[[1, 3, 5]])
    for name, value in ranks[0]["state"].items():  # DDP kept the replicas equal
        torch.testing.assert_close(ranks[1]["state"][name], value, msg=name)
    module = _module()
    module.load_state_dict(ranks[0]["state"])
    module.eval()
    images = torch.cat([ranks[0]["images"], ranks[1]["images"]]).requires_grad_()
    targets = module(images).argmax(1)
    maps = Saliency(module).attribute(images, target=targets)
    expected = {
        "explanations/saliency/deletion": metrics.deletion_auc(
            module, images.detach(), maps, targets, steps=8).mean(),
        "explanations/saliency/gini": metrics.gini_sparseness(maps).mean(),
    }
    for logged in (ranks[0]["logged"], ranks[1]["logged"]):
        for key, value in expected.items():
            torch.testing.assert_close(logged[key], value, rtol=1e-5, atol=1e-6, msg=key)
