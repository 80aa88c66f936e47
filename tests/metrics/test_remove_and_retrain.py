"""ROAR / DiffROAR against a brute-force loop, with a deterministic tiny "training"."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from captum_regularized.metrics import ROAR_FRACTIONS, remove_and_retrain
from tests.model_checks import untouched

SIZE = 6
CLASSES = 3


class NearestMean(nn.Module):
    """Scores: minus the distance to each class mean; remembers the images it scored."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.means: torch.Tensor
        self.register_buffer("means", means)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return -torch.cdist(x.flatten(1).double(), self.means).float()


def _class_means(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1).double()
    return torch.stack([flat[labels == c].mean(0) for c in range(CLASSES)])


class Spy:
    """``train(loader)``: the nearest-class-mean model of the loader's batches (exact, no
    SGD), keeping every loader, the images it yielded and the model it returned."""

    def __init__(self) -> None:
        self.loaders: list[DataLoader] = []
        self.images: list[torch.Tensor] = []
        self.models: list[NearestMean] = []

    def __call__(self, loader: DataLoader) -> nn.Module:
        batches = list(loader)
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        model = NearestMean(_class_means(images, labels))
        self.loaders.append(loader)
        self.images.append(images)
        self.models.append(model)
        return model


def _data(n: int, seed: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class raises a 2 x 2 patch (class c: top-left corner at (c, c))."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, SIZE, SIZE, generator=generator)
    labels = torch.arange(n) % CLASSES
    for i, c in enumerate(labels.tolist()):
        images[i, :, c:c + 2, c:c + 2] += 1.5
    return images, labels


def _loaders(shuffle: bool = True, channels: int = 3):
    train = TensorDataset(*_data(25, 1, channels))
    test = TensorDataset(*_data(16, 2, channels))
    generator = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=4, shuffle=shuffle, generator=generator),
        DataLoader(test, batch_size=5),
    )


def _pattern_explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A deterministic map that depends on the image and the class (no ties)."""
    ramp = torch.linspace(0.5, 1.5, SIZE * SIZE).view(1, 1, SIZE, SIZE)
    return inputs * ramp - 0.3 * targets.view(-1, 1, 1, 1).float()


# ------------------------------------------------------------------ the reference


def _count(fraction: float) -> int:
    return math.floor(fraction / 100 * SIZE * SIZE + 0.5)


def _remove_one(image, maps, count, fill):
    """Replace the ``count`` pixels with the largest max-over-channels |map| (stable order)."""
    values = maps.abs().amax(dim=0).flatten().tolist()
    order = sorted(range(len(values)), key=lambda i: -values[i])
    image = image.clone()
    for index in order[:count]:
        row, column = divmod(index, SIZE)
        image[:, row, column] = fill
    return image


def _reference_accuracy(train_data, test_data, explain, fraction, fill):
    """Remove pixels image by image, retrain the nearest-mean model, score it."""
    def removed(data):
        return torch.stack([
            _remove_one(x, explain(x[None], y.view(1))[0], _count(fraction), fill)
            for x, y in zip(*data.tensors)
        ])

    means = _class_means(removed(train_data), train_data.tensors[1])
    scores = -torch.cdist(removed(test_data).flatten(1).double(), means)
    return float((scores.argmax(1) == test_data.tensors[1]).double().mean())


def test_map_accuracies_match_a_brute_force_loop():
    train_loader, test_loader = _loaders()
    fractions = (5, 20, 50, 90)
    result = remove_and_retrain(Spy(), train_loader, test_loader, _pattern_explain,
                                fractions=fractions, progress=False)
    fill = train_loader.dataset.tensors[0].double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(result.fill, fill)
    for j, fraction in enumerate(fractions):
        expected = _reference_accuracy(train_loader.dataset, test_loader.dataset,
                                       _pattern_explain, fraction, fill.float())
        assert result.accuracy[j].item() == pytest.approx(expected), fraction
    assert result.fractions.tolist() == [float(f) for f in fractions]
    torch.testing.assert_close(result.diff_roar, result.random_accuracy - result.accuracy)
    assert result.diff_roar_mean == pytest.approx(float(result.diff_roar.mean()))
    assert result.accuracy.dtype == torch.float64


def test_per_item_correctness_matches_the_accuracies():
    train_loader, test_loader = _loaders()
    fractions = (10, 50, 90)
    spy = Spy()
    result = remove_and_retrain(spy, train_loader, test_loader, _pattern_explain,
                                fractions=fractions, progress=False)
    n = len(test_loader.dataset)
    for values, accuracy in ((result.correct, result.accuracy),
                             (result.random_correct, result.random_accuracy)):
        assert values is not None
        assert values.shape == (len(fractions), n)
        assert values.dtype == torch.bool and values.device.type == "cpu"
        assert torch.equal(accuracy, values.double().mean(1))
        for k in range(len(fractions)):
            assert accuracy[k].item() == values[k].double().mean().item()
    # one pass over the test set per retrained model, batched as the test loader
    for model in spy.models:
        assert [len(x) for x in model.seen] == [5, 5, 5, 1]


def test_per_item_correctness_against_a_reference_in_index_order():
    train_loader, _ = _loaders()
    test_data = TensorDataset(*_data(16, 2))
    # a shuffling test loader: the per-item values are still in the data set's order
    test_loader = DataLoader(test_data, batch_size=5, shuffle=True,
                             generator=torch.Generator().manual_seed(7))
    fractions, fill = (20, 50), 0.25
    spy = Spy()
    result = remove_and_retrain(spy, train_loader, test_loader, _pattern_explain,
                                fractions=fractions, fill=fill, progress=False)
    assert result.correct is not None and result.random_correct is not None
    train_images, train_labels = train_loader.dataset.tensors
    test_images, test_labels = test_data.tensors
    mixed = False

    def removed(images, labels, count):
        return torch.stack([
            _remove_one(x, _pattern_explain(x[None], y.view(1))[0], count, fill)
            for x, y in zip(images, labels)
        ])

    for j, fraction in enumerate(fractions):
        # the map's removal, the nearest-class-mean retraining and its verdicts, by hand
        count = _count(fraction)
        means = _class_means(removed(train_images, train_labels, count), train_labels)
        expected = [
            int(torch.cdist(x.flatten()[None].double(), means).argmin()) == int(y)
            for x, y in zip(removed(test_images, test_labels, count), test_labels)
        ]
        assert result.correct[j].tolist() == expected, fraction
        mixed = mixed or len(set(expected)) == 2
        # the random ranking: the retrained model's verdict on each item, in index order
        model = spy.models[2 * j + 1]
        seen = torch.cat(model.seen)
        assert _removed_pixels(seen, fill).sum(dim=1).tolist() == [_count(fraction)] * 16
        verdict = (model(seen).argmax(1) == test_labels).tolist()
        assert result.random_correct[j].tolist() == verdict
    assert mixed  # some items right and some wrong: the comparison is not vacuous


def _removed_pixels(images: torch.Tensor, fill: float) -> torch.Tensor:
    """Which pixels (all channels) hold the fill value, ``(N, H*W)``."""
    return (images == fill).all(dim=1).flatten(1)


def test_random_baseline_removes_nested_seeded_random_sets():
    train_loader, test_loader = _loaders(shuffle=False)
    fractions, fill = (10, 40, 70), -1.0
    spy = Spy()
    result = remove_and_retrain(spy, train_loader, test_loader, _pattern_explain,
                                fractions=fractions, fill=fill, seed=3, progress=False)
    assert len(spy.images) == 2 * len(fractions)  # map, random, map, random, ...
    masks = [_removed_pixels(images, fill) for images in spy.images]
    for j, fraction in enumerate(fractions):
        for mask in masks[2 * j:2 * j + 2]:
            assert mask.sum(dim=1).tolist() == [_count(fraction)] * 25
    for kind in (0, 1):  # nested: what 10 % removes, 40 % removes too
        for j in range(len(fractions) - 1):
            assert (masks[2 * j + kind] <= masks[2 * j + 2 + kind]).all()
    assert not torch.equal(masks[0], masks[1])
    # every image gets its own random order, not one order for all
    assert len({tuple(row.tolist()) for row in masks[1]}) > 20
    # the reported random accuracy is that of the images the retrained model was tested on
    labels = test_loader.dataset.tensors[1]
    for j in range(len(fractions)):
        model = spy.models[2 * j + 1]
        seen = torch.cat(model.seen)
        assert _removed_pixels(seen, fill).sum(dim=1).tolist() == [_count(fractions[j])] * 16
        accuracy = float((model(seen).argmax(1) == labels).double().mean())
        assert result.random_accuracy[j].item() == pytest.approx(accuracy)
    again = Spy()
    remove_and_retrain(again, train_loader, test_loader, _pattern_explain,
                       fractions=fractions, fill=fill, seed=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(spy.images, again.images))
    other = Spy()
    remove_and_retrain(other, train_loader, test_loader, _pattern_explain,
                       fractions=fractions, fill=fill, seed=4, progress=False)
    assert torch.equal(other.images[0], spy.images[0])  # the map's removal has no seed
    assert not torch.equal(other.images[1], spy.images[1])


def _patch_map(corner_of: torch.Tensor, size: int = 2) -> torch.Tensor:
    maps = torch.zeros(len(corner_of), 1, SIZE, SIZE)
    for i, c in enumerate(corner_of.tolist()):
        maps[i, 0, c:c + size, c:c + size] = 1.0
    return maps


def test_the_informative_map_beats_random_and_a_misleading_map_does_not():
    train_loader, test_loader = _loaders()
    fractions = (12, 25)

    def informative(inputs, targets):  # the class's own patch
        return _patch_map(targets)

    def misleading(inputs, targets):  # the bottom-right corner, never informative
        return _patch_map(torch.full_like(targets, SIZE - 2))

    good = remove_and_retrain(Spy(), train_loader, test_loader, informative,
                              fractions=fractions, progress=False)
    bad = remove_and_retrain(Spy(), train_loader, test_loader, misleading,
                             fractions=fractions, progress=False)
    assert (good.diff_roar > 0).all() and good.diff_roar_mean > 0.2
    assert bad.accuracy.tolist() == [1.0, 1.0]
    assert bad.diff_roar_mean <= 0


def test_the_callers_loaders_and_data_sets_are_untouched():
    train_loader, test_loader = _loaders()
    before = [t.clone() for t in (*train_loader.dataset.tensors, *test_loader.dataset.tensors)]
    spy = Spy()
    remove_and_retrain(spy, train_loader, test_loader, _pattern_explain, fractions=(50,),
                       fill=0.0, progress=False)
    after = [*train_loader.dataset.tensors, *test_loader.dataset.tensors]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not any((batch[0] == 0).all(dim=1).any() for batch in train_loader)
    for loader in spy.loaders:  # the caller's sampling and batching
        assert loader.batch_sampler is train_loader.batch_sampler
        assert loader.collate_fn is train_loader.collate_fn
        assert loader.dataset is not train_loader.dataset


def test_fill_values():
    train_loader, test_loader = _loaders(shuffle=False)
    spy = Spy()
    result = remove_and_retrain(spy, train_loader, test_loader, _pattern_explain,
                                fractions=(30,), fill=[0.1, 0.2, 0.3], progress=False)
    assert result.fill.tolist() == pytest.approx([0.1, 0.2, 0.3])
    images = spy.images[0]
    removed = (images[:, 0] == 0.1) & (images[:, 1] == 0.2) & (images[:, 2] == 0.3)
    assert removed.flatten(1).sum(1).tolist() == [_count(30)] * 25


def test_captum_saliency_of_a_trained_model_with_predicted_targets(device):
    torch.manual_seed(0)
    train_loader, test_loader = _loaders(channels=1)

    def train(loader: DataLoader) -> nn.Module:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, CLASSES)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            for images, labels in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
                optimizer.step()
        return model

    original = train(train_loader).train()
    with untouched(original):
        result = remove_and_retrain(train, train_loader, test_loader, Saliency(original),
                                    fractions=(20, 60), target="predicted", model=original,
                                    progress=False)
    assert result.accuracy.shape == result.random_accuracy.shape == (2,)
    assert ((result.accuracy >= 0) & (result.accuracy <= 1)).all()
    assert math.isfinite(result.diff_roar_mean)


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.rand(3, SIZE, SIZE), 0


class _Augmented(Dataset):
    """A random transform: each read of an item gives another image."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return torch.rand(3, SIZE, SIZE), index % CLASSES


def _nan_loader() -> DataLoader:
    images, labels = _data(6, 5)
    images[4, 1, 2, 2] = math.nan
    return DataLoader(TensorDataset(images, labels), batch_size=4)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(fractions=(0, 50)), ValueError, "between 0 and 100"),
        (dict(fractions=(50, 100)), ValueError, "between 0 and 100"),
        (dict(fractions=(-5,)), ValueError, "between 0 and 100"),
        (dict(fractions=(math.nan,)), ValueError, "between 0 and 100"),
        (dict(fractions=()), ValueError, "at least one"),
        (dict(fractions=(50, 10)), ValueError, "increasing"),
        (dict(fractions=(10, 10)), ValueError, "increasing"),
        (dict(fractions="10"), TypeError, "fractions"),
        (dict(fractions=(True,)), TypeError, "fractions"),
        (dict(train=3), TypeError, "train"),
        (dict(train=lambda loader: "model"), TypeError, "nn.Module"),
        (dict(train_loader=[1, 2]), TypeError, "train_loader"),
        (dict(test_loader=DataLoader(_Stream())), ValueError, "map-style"),
        (dict(train_loader=DataLoader(TensorDataset(torch.zeros(0, 3, SIZE, SIZE),
                                                    torch.zeros(0)))), ValueError, "empty"),
        (dict(train_loader=_nan_loader()), ValueError, "NaN"),
        (dict(test_loader=DataLoader(_Augmented(), batch_size=2)), ValueError, "random"),
        (dict(test_loader=DataLoader(TensorDataset(*_data(4, 3, channels=1)))), ValueError,
         "one shape"),
        (dict(explain=None), TypeError, "explain"),
        (dict(target="predicted"), ValueError, "model"),
        (dict(target="best"), ValueError, "target"),
        (dict(fill="median"), ValueError, "fill"),
        (dict(fill=[0.0, 1.0]), ValueError, "one value per channel"),
        (dict(fill=math.inf), ValueError, "finite"),
        (dict(channel_reduction="norm"), ValueError, "channel_reduction"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    train_loader, test_loader = _loaders()
    arguments = dict(train=Spy(), train_loader=train_loader, test_loader=test_loader,
                     explain=_pattern_explain, fractions=(50,), progress=False)
    arguments.update(change)
    with pytest.raises(error, match=match):
        remove_and_retrain(**arguments)


def test_default_fractions_are_hookers():
    assert ROAR_FRACTIONS == (10.0, 30.0, 50.0, 70.0, 90.0)
