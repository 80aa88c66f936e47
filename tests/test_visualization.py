"""Headless rendering checks for captum_regularized.visualization."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from captum_regularized.visualization import plot_attributions, plot_curves  # noqa: E402


def _heat(ax):
    return [im for im in ax.images if im.get_gid() == "attribution"][0]


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
            pos, sgn = _heat(axes[b, 1]), _heat(axes[b, 2])
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
        heat = _heat(axes[1, 0])
        assert heat.get_array().shape == (4, 4)
        assert heat.get_array().min() >= 0
        assert heat.get_cmap().name == "inferno"
    finally:
        plt.close(fig)


def test_shared_colorbar_uses_one_limit() -> None:
    a, b = torch.rand(1, 1, 4, 4), 10 * torch.rand(1, 1, 4, 4)
    fig, axes = plot_attributions(
        torch.rand(1, 3, 4, 4), {"a": a, "b": b}, colorbar="shared", percentile=100
    )
    try:
        limit = torch.cat([a, b]).max().item()
        for ax in axes[0, 1:]:
            np.testing.assert_allclose(_heat(ax).get_clim(), (0, limit), rtol=1e-5)
        assert len(fig.axes) == 4  # three panels plus one shared colour bar
    finally:
        plt.close(fig)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="batch size"):
        plot_attributions(torch.rand(2, 3, 4, 4), {"m": torch.rand(3, 3, 4, 4)})
    with pytest.raises(ValueError, match="NaN"):
        plot_attributions(torch.rand(1, 3, 4, 4), {"m": torch.full((1, 4, 4), float("nan"))})
    with pytest.raises(ValueError, match="not in attributions"):
        plot_attributions(torch.rand(1, 3, 4, 4), {"m": torch.rand(1, 4, 4)}, signed={"x": True})
    with pytest.raises(TypeError, match="results"):
        plot_curves([1, 2])
    plt.close("all")


def test_plot_curves_mean_band_and_auc(device: torch.device) -> None:
    x = torch.linspace(0, 1, 5, device=device)
    batched = torch.rand(3, 5, device=device)
    fig, ax = plot_curves({"a": (x, batched), "b": {"fractions": x, "values": x}})
    try:
        lines = ax.get_lines()
        assert len(lines) == 2
        np.testing.assert_allclose(lines[0].get_ydata(), batched.mean(0).cpu(), rtol=1e-5)
        assert len(ax.collections) == 1  # the std band of the batched curve
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[1] == "b (AUC 0.500)"
    finally:
        plt.close(fig)
