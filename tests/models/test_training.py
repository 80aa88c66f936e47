"""SimpleCNN and train_classifier: ReLU modules, the loss hook, and held-out accuracy."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from captum_regularized.datasets import SyntheticShapes
from captum_regularized.models import (
    LossHook,
    SimpleCNN,
    evaluate_accuracy,
    evaluate_correct,
    train_classifier,
    with_cross_entropy,
)
from tests.training_reference import hand_written_step


def test_simple_cnn_uses_distinct_relu_modules():
    model = SimpleCNN(num_classes=7, in_channels=1, width=4)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 4 and len({id(m) for m in relus}) == 4
    assert not any(m.inplace for m in relus)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 7)
    with pytest.raises(ValueError, match="num_classes"):
        SimpleCNN(num_classes=0)


def test_simple_cnn_and_training_reach_90_percent_held_out():
    torch.manual_seed(0)
    args = dict(image_size=32, num_classes=10, num_distractors=2)
    train = SyntheticShapes(2500, seed=0, **args).materialize()
    test_images, test_labels, _ = SyntheticShapes(400, seed=99, **args).tensors()
    model = SimpleCNN(10, width=8)
    history = train_classifier(model, train, epochs=4, batch_size=64, lr=1e-2, progress=False)
    accuracy = evaluate_accuracy(model, TensorDataset(test_images, test_labels))
    assert accuracy >= 0.90, accuracy
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.training  # left in train mode after training, as documented


def test_loss_hook_forms():
    data = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 2, (8,)))
    calls = []
    model = SimpleCNN(2, width=2)

    def pair_loss(x, y):
        calls.append(len(x))
        logits = model(x)
        return logits, logits.pow(2).mean() * 0.0

    # the pair form of earlier releases still trains, with a deprecation warning
    with pytest.warns(DeprecationWarning, match="with_cross_entropy"):
        history = train_classifier(
            model, data, epochs=1, batch_size=4, loss=pair_loss, progress=False
        )
    assert calls == [4, 4] and 0.0 <= history[0]["accuracy"] <= 1.0

    def scalar_loss(x, y):
        return F.cross_entropy(model(x), y)

    history = train_classifier(
        model, data, epochs=1, batch_size=4, loss=scalar_loss, progress=False
    )
    assert math.isnan(history[0]["accuracy"]) and history[0]["loss"] > 0


def test_bad_training_arguments():
    data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(SimpleCNN(2, width=2), data, epochs=0)
    with pytest.raises(TypeError, match="image, label"):
        train_classifier(SimpleCNN(2, width=2), torch.rand(4, 3, 8, 8), epochs=1, progress=False)
    empty = TensorDataset(torch.rand(0, 3, 8, 8), torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(SimpleCNN(2, width=2), empty)


def _pair_hook(model):
    def hook(images, labels):
        logits = model(images)
        return logits, 0.3 * logits.square().mean()

    return hook


def test_with_cross_entropy_takes_the_hand_written_step_and_reports_accuracy():
    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 1, 0])
    model = SimpleCNN(2, width=2)
    reference = copy.deepcopy(model)
    hook: LossHook = with_cross_entropy(_pair_hook(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new form does not warn
        history = train_classifier(model, TensorDataset(images, labels), epochs=1,
                                   batch_size=6, lr=1e-2, loss=hook, progress=False)
    outputs = {}

    def loss():
        logits = reference(images)
        outputs["logits"] = logits.detach()
        return F.cross_entropy(logits, labels) + 0.3 * logits.square().mean()

    expected = hand_written_step(reference, loss, lr=1e-2)
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    accuracy = float((outputs["logits"].argmax(1) == labels).float().mean())
    assert history[0]["accuracy"] == pytest.approx(accuracy)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_old_pair_form_and_with_cross_entropy_train_alike():
    data = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 2, (8,)))
    start = SimpleCNN(2, width=2)
    runs = []
    for wrap in (False, True):
        model = copy.deepcopy(start)
        hook = _pair_hook(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = train_classifier(model, data, epochs=2, batch_size=4, progress=False,
                                       loss=with_cross_entropy(hook) if wrap else hook)
        deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        # the old form warns once per call (not per batch), pointing at the caller
        assert len(deprecations) == (0 if wrap else 1)
        assert all(w.filename == __file__ for w in deprecations)
        runs.append((history, model))
    (old, old_model), (new, new_model) = runs
    for a, b in zip(old, new):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["accuracy"] == pytest.approx(b["accuracy"])
    for ours, theirs in zip(old_model.parameters(), new_model.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_bad_loss_hooks_are_clear_errors():
    data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    model = SimpleCNN(2, width=2)
    per_example = lambda x, y: F.cross_entropy(model(x), y, reduction="none")  # noqa: E731
    with pytest.raises(TypeError, match=r"0-d training loss.*\(4,\)"):
        train_classifier(model, data, epochs=1, batch_size=4, loss=per_example, progress=False)
    with pytest.raises(TypeError, match=r"0-d training loss.*float"):
        train_classifier(model, data, epochs=1, batch_size=4, loss=lambda x, y: 1.0,
                         progress=False)
    with pytest.raises(TypeError, match="penalty must be a callable"):
        with_cross_entropy(torch.tensor(1.0))  # type: ignore[arg-type]
    not_a_pair = with_cross_entropy(lambda x, y: model(x))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"\(logits, penalty\) pair of tensors, got Tensor"):
        train_classifier(model, data, epochs=1, batch_size=4, loss=not_a_pair, progress=False)
    assert "with_cross_entropy" in repr(with_cross_entropy(_pair_hook(model)))


def test_evaluate_correct_is_the_per_item_verdict_behind_the_accuracy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).train()
    images = torch.rand(11, 3, 2, 2)
    labels = torch.randint(0, 3, (11,))
    data = TensorDataset(images, labels)
    hits = evaluate_correct(model, data, batch_size=4)
    with torch.no_grad():  # the reference: one forward pass in eval mode
        expected = model.eval()(images).argmax(1) == labels
    model.train()
    assert hits.dtype == torch.bool and hits.device.type == "cpu"
    assert torch.equal(hits, expected) and model.training  # modes restored
    assert evaluate_accuracy(model, data, batch_size=4) == hits.double().mean().item()
    with pytest.raises(ValueError, match="data is empty; evaluate_correct"):
        evaluate_correct(model, TensorDataset(images[:0], labels[:0]))
