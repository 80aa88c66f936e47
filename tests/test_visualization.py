"""Tests for captum_regularized.visualization: figures are rendered headless and inspected."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage

from captum_regularized.visualization import (
    ATTRIBUTION_GID,
    MASK_OUTLINE_GID,
    plot_attributions,
    plot_curves,
)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def heat_image(ax: plt.Axes) -> AxesImage:
    """The one heat map of a method panel."""
    found = [im for im in ax.get_images() if im.get_gid() == ATTRIBUTION_GID]
    assert len(found) == 1
    return found[0]


def has_mask_outline(ax: plt.Axes) -> bool:
    artists = list(ax.collections) + list(ax.get_children())
    return any(artist.get_gid() == MASK_OUTLINE_GID for artist in artists)


def draw(fig: plt.Figure) -> None:
    """Render on the Agg canvas: layout and drawing errors only show up here."""
    fig.canvas.draw()


# --------------------------------------------------------------------------- layout


def test_grid_one_row_per_image_and_a_column_per_method(device: torch.device) -> None:
    images = torch.rand(3, 3, 12, 12, device=device)
    maps = {
        "a": torch.rand(3, 3, 12, 12, device=device),
        "b": torch.rand(3, 1, 12, 12, device=device),
        "c": torch.rand(3, 12, 12, device=device),
    }
    fig, axes = plot_attributions(images, maps)
    draw(fig)
    assert axes.shape == (3, 4)
    assert [ax.get_title() for ax in axes[0]] == ["input", "a", "b", "c"]
    # titles only on the first row
    assert all(ax.get_title() == "" for ax in axes[1])
    for row in range(3):
        assert len(axes[row, 0].get_images()) == 1  # input only
        for col in range(1, 4):
            heat_image(axes[row, col])
    # plot_attributions never shows the figure: it stays registered with pyplot
    assert plt.fignum_exists(fig.number)


def test_input_panel_shows_the_image_itself() -> None:
    images = torch.rand(2, 3, 8, 8)
    _fig, axes = plot_attributions(images, {"m": torch.rand(2, 3, 8, 8)})
    for b in range(2):
        shown = np.asarray(axes[b, 0].get_images()[0].get_array())
        np.testing.assert_allclose(shown, images[b].permute(1, 2, 0).numpy(), atol=1e-6)


def test_ncols_wraps_each_image_over_several_grid_rows() -> None:
    images = torch.rand(2, 3, 8, 8)
    maps = {name: torch.rand(2, 3, 8, 8) for name in "abcd"}  # 5 panels per image
    fig, axes = plot_attributions(images, maps, ncols=2)
    draw(fig)
    assert axes.shape == (6, 2)  # 2 images x ceil(5 / 2) rows
    # the sixth cell of every image is unused and switched off
    assert not axes[2, 1].axison and not axes[5, 1].axison
    assert axes[2, 0].axison
    assert [axes[0, 0].get_title(), axes[0, 1].get_title(), axes[2, 0].get_title()] == [
        "input",
        "a",
        "d",
    ]
    heat_image(axes[3, 1])  # second image, method "a"


def test_single_chw_image_gives_one_row() -> None:
    _fig, axes = plot_attributions(torch.rand(3, 10, 10), {"m": torch.randn(3, 10, 10)})
    assert axes.shape == (1, 2)
    assert heat_image(axes[0, 1]).get_array().shape == (10, 10)


def test_tuple_inputs_use_the_first_tensor(device: torch.device) -> None:
    images = torch.rand(2, 3, 8, 8, device=device)
    extra = torch.rand(2, 5, device=device)
    saliency = torch.randn(2, 3, 8, 8, device=device)
    fig, axes = plot_attributions(
        (images, extra), {"m": (saliency, torch.zeros(2, 5, device=device))}, signed=True
    )
    draw(fig)
    assert axes.shape == (2, 2)
    expected = saliency.sum(dim=1).cpu().numpy()
    np.testing.assert_allclose(heat_image(axes[1, 1]).get_array(), expected[1], rtol=1e-5)


def test_coarse_layer_map_is_upsampled_to_the_image_size() -> None:
    coarse = torch.zeros(1, 1, 2, 2)
    coarse[0, 0, 0, 0] = 1.0
    _fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"cam": coarse})
    values = np.asarray(heat_image(axes[0, 1]).get_array())
    assert values.shape == (8, 8)
    # top-left quadrant holds the evidence
    assert values[:4, :4].mean() > values[4:, 4:].mean()
    assert values[0, 0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- colours


def test_signed_map_is_diverging_and_centred_at_zero(device: torch.device) -> None:
    attribution = torch.randn(2, 3, 8, 8, device=device)
    attribution[0, 0, 0, 0] = 5.0  # skewed positive: limits must stay symmetric
    fig, axes = plot_attributions(torch.rand(2, 3, 8, 8, device=device), {"s": attribution})
    draw(fig)
    for b in range(2):
        heat = heat_image(axes[b, 1])
        assert heat.get_cmap().name == "RdBu_r"
        vmin, vmax = heat.get_clim()
        assert vmax > 0 and vmin == pytest.approx(-vmax)
        # the shown values keep their sign (channel sum, not magnitude)
        expected = attribution[b].sum(dim=0).cpu().numpy()
        np.testing.assert_allclose(heat.get_array(), expected, rtol=1e-5, atol=1e-6)


def test_unsigned_map_uses_a_sequential_colormap_from_zero() -> None:
    attribution = torch.rand(2, 3, 8, 8)
    _fig, axes = plot_attributions(torch.rand(2, 3, 8, 8), {"u": attribution})
    heat = heat_image(axes[0, 1])
    assert heat.get_cmap().name == "inferno"
    vmin, vmax = heat.get_clim()
    assert vmin == 0.0 and vmax > 0
    np.testing.assert_allclose(heat.get_array(), attribution[0].sum(0).numpy(), rtol=1e-5)


def test_signed_false_shows_magnitudes() -> None:
    attribution = -torch.rand(1, 3, 6, 6)
    _fig, axes = plot_attributions(torch.rand(1, 3, 6, 6), {"g": attribution}, signed=False)
    heat = heat_image(axes[0, 1])
    assert heat.get_cmap().name == "inferno"
    np.testing.assert_allclose(heat.get_array(), attribution[0].abs().sum(0).numpy(), rtol=1e-5)
    assert heat.get_clim()[0] == 0.0


def test_signed_dict_chooses_per_method_and_custom_colormaps() -> None:
    positive = torch.rand(1, 3, 6, 6)
    _fig, axes = plot_attributions(
        torch.rand(1, 3, 6, 6),
        {"forced": positive, "auto": positive},
        signed={"forced": True},
        cmap_signed="coolwarm",
        cmap_unsigned="viridis",
    )
    forced, auto = heat_image(axes[0, 1]), heat_image(axes[0, 2])
    assert forced.get_cmap().name == "coolwarm"
    assert forced.get_clim()[0] == pytest.approx(-forced.get_clim()[1])
    assert auto.get_cmap().name == "viridis"
    assert auto.get_clim()[0] == 0.0


def test_colour_limit_is_the_requested_percentile_of_magnitudes() -> None:
    attribution = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    _fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"s": attribution}, percentile=100)
    assert heat_image(axes[0, 1]).get_clim() == pytest.approx((-1.0, 1.0))
    _fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"s": attribution}, percentile=50)
    expected = float(np.percentile(np.abs(attribution.numpy()), 50))
    assert heat_image(axes[0, 1]).get_clim() == pytest.approx((-expected, expected))


def test_shared_colorbar_gives_one_range_per_kind() -> None:
    small = 0.1 * torch.randn(2, 3, 8, 8)
    large = 10 * torch.randn(2, 3, 8, 8)
    magnitude = torch.rand(2, 3, 8, 8)
    maps = {"small": small, "large": large, "magnitude": magnitude}
    fig, axes = plot_attributions(
        torch.rand(2, 3, 8, 8), maps, colorbar="shared", percentile=100
    )
    draw(fig)
    limit = float(np.abs(np.concatenate([small.sum(1).numpy(), large.sum(1).numpy()])).max())
    for b in range(2):
        for col in (1, 2):
            assert heat_image(axes[b, col]).get_clim() == pytest.approx((-limit, limit))
        assert heat_image(axes[b, 3]).get_clim() == pytest.approx(
            (0.0, float(magnitude.sum(1).max()))
        )
    # one shared colour bar per kind: two extra axes beyond the grid
    assert len(fig.axes) == axes.size + 2
    labels = sorted(ax.get_ylabel() for ax in fig.axes[axes.size:])
    assert labels == ["attribution magnitude", "signed attribution"]


def test_each_colorbar_adds_one_bar_per_map_with_its_own_limits() -> None:
    maps = {"a": torch.randn(2, 3, 8, 8), "b": 100 * torch.rand(2, 3, 8, 8)}
    fig, axes = plot_attributions(torch.rand(2, 3, 8, 8), maps, colorbar=True)
    draw(fig)
    assert len(fig.axes) == axes.size + 4
    assert heat_image(axes[0, 2]).get_clim()[1] > 10 * heat_image(axes[0, 1]).get_clim()[1]


def test_without_colorbar_only_the_grid_exists() -> None:
    fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"a": torch.randn(1, 3, 8, 8)})
    assert len(fig.axes) == axes.size


def test_overlay_draws_a_grey_background_and_transparency() -> None:
    attribution = torch.randn(1, 3, 8, 8)
    _fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"s": attribution})
    images = axes[0, 1].get_images()
    assert len(images) == 2 and images[0].get_cmap().name == "gray"
    alpha = np.asarray(heat_image(axes[0, 1]).get_alpha())
    assert alpha.shape == (8, 8) and alpha.min() >= 0 and alpha.max() <= 0.75 + 1e-9
    _fig, axes = plot_attributions(torch.rand(1, 3, 8, 8), {"s": attribution}, overlay=False)
    assert len(axes[0, 1].get_images()) == 1
    assert heat_image(axes[0, 1]).get_alpha() is None


# --------------------------------------------------------------------------- mask


def test_mask_outline_is_drawn_on_the_input_panel(device: torch.device) -> None:
    mask = torch.zeros(2, 1, 12, 12, device=device)
    mask[:, :, 3:9, 3:9] = 1
    fig, axes = plot_attributions(
        torch.rand(2, 3, 12, 12, device=device),
        {"m": torch.rand(2, 3, 12, 12, device=device)},
        mask=mask,
    )
    draw(fig)
    assert has_mask_outline(axes[0, 0]) and has_mask_outline(axes[1, 0])
    assert not has_mask_outline(axes[0, 1])
    fig, axes = plot_attributions(torch.rand(2, 3, 12, 12), {"m": torch.rand(2, 3, 12, 12)})
    assert not has_mask_outline(axes[0, 0])


def test_mask_outline_follows_the_mask_boundary() -> None:
    mask = torch.zeros(16, 16)
    mask[4:12, 6:10] = 1
    _fig, axes = plot_attributions(torch.rand(3, 16, 16), {"m": torch.rand(3, 16, 16)}, mask=mask)
    outline = next(c for c in axes[0, 0].collections if c.get_gid() == MASK_OUTLINE_GID)
    vertices = np.concatenate([p.vertices for p in outline.get_paths()])
    # contour x = column, y = row; the 0.5 level sits half a pixel outside the ones
    assert vertices[:, 0].min() == pytest.approx(5.5) and vertices[:, 0].max() == pytest.approx(9.5)
    assert vertices[:, 1].min() == pytest.approx(3.5)
    assert vertices[:, 1].max() == pytest.approx(11.5)


def test_row_labels_are_written_next_to_each_input() -> None:
    _fig, axes = plot_attributions(
        torch.rand(2, 3, 8, 8), {"m": torch.rand(2, 3, 8, 8)}, row_labels=["cat", "dog"]
    )
    assert [axes[0, 0].get_ylabel(), axes[1, 0].get_ylabel()] == ["cat", "dog"]


def test_signed_unsigned_maps_mask_and_limits(device: torch.device) -> None:
    images = torch.rand(2, 3, 8, 8, device=device)
    positive = torch.rand(2, 3, 8, 8, device=device)
    signed = torch.randn(2, 3, 8, 8, device=device)
    mask = torch.zeros(2, 8, 8, device=device)
    mask[:, 2:6, 2:6] = 1
    fig, axes = plot_attributions(
        (images,), {"pos": positive, "sgn": (signed,)}, mask=mask, percentile=100
    )
    try:
        assert axes.shape == (2, 3)
        for b in range(2):
            pos, sgn = heat_image(axes[b, 1]), heat_image(axes[b, 2])
            assert pos.get_cmap().name == "inferno"
            assert sgn.get_cmap().name == "RdBu_r"
            expected_pos = positive[b].sum(0).max().item()
            expected_sgn = signed[b].sum(0).abs().max().item()
            np.testing.assert_allclose(pos.get_clim(), (0.0, expected_pos), rtol=1e-5)
            np.testing.assert_allclose(sgn.get_clim(), (-expected_sgn, expected_sgn), rtol=1e-5)
            np.testing.assert_allclose(sgn.get_array(), signed[b].sum(0).cpu(), rtol=1e-5)
            assert any(c.get_gid() == "mask-outline" for c in axes[b, 0].collections)
            assert not axes[b, 1].collections
    finally:
        plt.close(fig)


def test_forced_unsigned_shows_magnitude_and_upsamples_coarse_maps() -> None:
    cam = torch.tensor([[[-1.0, 2.0], [3.0, -4.0]]])
    fig, axes = plot_attributions(
        torch.rand(3, 4, 4), {"cam": cam}, signed=False, overlay=False, ncols=1
    )
    try:
        assert axes.shape == (2, 1)
        heat = heat_image(axes[1, 0])
        assert heat.get_array().shape == (4, 4)
        assert heat.get_array().min() >= 0
        assert heat.get_cmap().name == "inferno"
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attributions": {"m": torch.rand(3, 3, 8, 8)}}, ValueError, r"batch size 3 .* 2"),
        ({"attributions": {"m": torch.rand(2, 3, 8, 8, 1)}}, ValueError, r"attributions\['m'\]"),
        ({"attributions": {"m": torch.rand(8, 8)}}, ValueError, r"attributions\['m'\] must be"),
        ({"attributions": {"m": "not a tensor"}}, TypeError, r"attributions\['m'\]"),
        ({"attributions": [torch.rand(2, 3, 8, 8)]}, TypeError, "attributions must be a dict"),
        ({"attributions": {"m": torch.full((2, 3, 8, 8), float("nan"))}}, ValueError, "NaN"),
        ({"mask": torch.ones(3, 8, 8)}, ValueError, "mask must have shape"),
        ({"mask": torch.ones(2, 8, 9)}, ValueError, "mask must have shape"),
        ({"signed": {"other": True}}, ValueError, "signed names methods"),
        ({"signed": "yes"}, TypeError, "signed must be"),
        ({"colorbar": "both"}, ValueError, "colorbar must be"),
        ({"ncols": 0}, ValueError, "ncols must be"),
        ({"percentile": 0}, ValueError, "percentile must be"),
        ({"alpha": 2.0}, ValueError, "alpha must be"),
        ({"row_labels": ["one"]}, ValueError, "row_labels"),
    ],
)
def test_bad_input_gives_clear_errors(kwargs: dict, error: type, match: str) -> None:
    arguments = {"attributions": {"m": torch.rand(2, 3, 8, 8)}, **kwargs}
    before = plt.get_fignums()
    with pytest.raises(error, match=match):
        plot_attributions(torch.rand(2, 3, 8, 8), **arguments)
    assert plt.get_fignums() == before  # no half-built figure left behind


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.rand(1, 1, 3, 8, 8), ValueError, "image must be HW, CHW or BCHW"),
        ([1, 2, 3], TypeError, "image must be a torch.Tensor"),
        ((), ValueError, "image is an empty tuple"),
        (torch.tensor([[float("inf")]]), ValueError, "image contains NaN"),
    ],
)
def test_bad_image_gives_clear_errors(image: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plot_attributions(image, {"m": torch.rand(8, 8)})


def test_inputs_are_left_untouched(device: torch.device) -> None:
    images = torch.randn(2, 3, 8, 8, device=device)
    attribution = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    saved_images, saved_attribution = images.clone(), attribution.detach().clone()
    plot_attributions(images, {"m": attribution}, colorbar="shared")
    assert torch.equal(images, saved_images)
    assert torch.equal(attribution.detach(), saved_attribution)
    assert attribution.device.type == device.type


# --------------------------------------------------------------------------- curves


def test_plot_curves_draws_one_labelled_line_per_method(device: torch.device) -> None:
    steps = torch.linspace(0, 1, 11, device=device)
    record = SimpleNamespace(fractions=steps, values=torch.stack([1 - steps, 1 - steps**2]))
    results = {
        "pair": (steps, 1 - steps),
        "dict": {"fractions": steps.cpu().numpy(), "values": (1 - steps**0.5).tolist(), "x": 0},
        "record": record,
    }
    fig, ax = plot_curves(results, title="deletion")
    draw(fig)
    lines = ax.get_lines()
    assert len(lines) == 3
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert [label.split(" (")[0] for label in labels] == ["pair", "dict", "record"]
    x = steps.cpu().numpy()
    expected_mean = (2 - x - x**2) / 2
    np.testing.assert_allclose(lines[2].get_ydata(), expected_mean, rtol=1e-6)
    np.testing.assert_allclose(lines[0].get_xdata(), x)
    # AUC by the trapezoid rule, written as the reference loop
    y = 1 - x**0.5
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    assert labels[1] == f"dict (AUC {area:.3f})"
    assert ax.get_title() == "deletion"
    assert ax.get_xlabel() == "fraction of pixels perturbed"
    # the batched record gets a standard-deviation band; the single curves none
    assert len(ax.collections) == 1


def test_plot_curves_options_and_existing_axes() -> None:
    fig, ax = plt.subplots()
    steps = np.linspace(0, 1, 5)
    batch = np.stack([1 - steps, 1 - steps])
    out_fig, out_ax = plot_curves(
        {"a": (steps, batch)}, ax=ax, show_auc=False, band=False, ylabel="kept"
    )
    assert out_fig is fig and out_ax is ax
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a"]
    assert len(ax.collections) == 0
    assert ax.get_ylabel() == "kept"


def test_plot_curves_with_metric_records() -> None:
    from captum_regularized.metrics import allegiance_deletion_auc, deletion_curve
    from captum_regularized.models import SimpleCNN

    model = SimpleCNN(num_classes=3, in_channels=3, width=4).eval()
    images = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 3, 16, 16)
    curve = deletion_curve(model, images, maps, target=0, steps=4)
    allegiance = allegiance_deletion_auc(model, images, maps, fractions=(0.0, 0.5, 1.0))
    _fig, ax = plot_curves({"deletion": curve, "allegiance": allegiance})
    deletion_line, allegiance_line = ax.get_lines()
    np.testing.assert_allclose(deletion_line.get_xdata(), curve.fractions.numpy())
    np.testing.assert_allclose(deletion_line.get_ydata(), curve.scores.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        allegiance_line.get_ydata(), allegiance.allegiance.float().numpy(), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("results", "error", "match"),
    [
        ([(0, 1)], TypeError, "results must be a dict"),
        ({"m": 3.0}, TypeError, r"results\['m'\]"),
        ({"m": {"values": [1, 2]}}, ValueError, "without 'fractions'"),
        ({"m": ([0, 1, 2], [1, 0])}, ValueError, "as many steps"),
        ({"m": ([0.0], [1.0])}, ValueError, "at least two steps"),
        ({"m": ([0, 1], [1, float("nan")])}, ValueError, "NaN"),
    ],
)
def test_plot_curves_bad_input(results: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plot_curves(results)
