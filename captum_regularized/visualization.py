"""Matplotlib figures of attribution maps and evaluation curves, from tensors on any device.

Neither helper calls ``plt.show()``; close the figures with ``plt.close(fig)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from captum_regularized._internal.pixel_maps import per_pixel_map

__all__ = ["plot_attributions", "plot_curves"]

ArrayLike = torch.Tensor | np.ndarray
TensorOrTuple = ArrayLike | Sequence[ArrayLike]

ATTRIBUTION_GID = "attribution"  # gid of the heat map of every method panel
MASK_OUTLINE_GID = "mask-outline"  # gid of the contour of the ground-truth mask


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """The first tensor of ``value`` (tuples mirror Captum's multi-input form), detached."""
    if isinstance(value, (tuple, list)):
        if len(value) == 0:
            raise ValueError(f"{name} is an empty tuple; expected at least one tensor")
        value = value[0]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, a numpy array or a tuple of them, "
            f"got {type(value).__name__}"
        )
    return value.detach()


def _image_batch(image: TensorOrTuple) -> tuple[torch.Tensor, bool]:
    """``(B, C, H, W)`` float images on the CPU and whether a single image was given."""
    tensor = _as_tensor(image, "image")
    if tensor.dim() not in (2, 3, 4):
        raise ValueError(
            f"image must be HW, CHW or BCHW, got a {tensor.dim()}-d tensor of shape "
            f"{tuple(tensor.shape)}"
        )
    single = tensor.dim() < 4
    while tensor.dim() < 4:
        tensor = tensor[None]
    tensor = tensor.float().cpu()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("image contains NaN or infinite values")
    return tensor, single


def _displayable(images: torch.Tensor) -> np.ndarray:
    """``(B, H, W, 3)`` RGB in [0, 1]; images outside [0, 1] are min-max scaled per image."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    outside = (low < 0) | (high > 1)
    scaled = torch.where(outside, (images - low) / (high - low).clamp_min(1e-12), images)
    if scaled.shape[1] != 3:
        scaled = scaled.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return scaled.permute(0, 2, 3, 1).clamp(0, 1).numpy()


def _raw_attribution(value: TensorOrTuple, name: str, batch: int, single: bool) -> torch.Tensor:
    """``(B, C, h, w)`` attribution on its own device, checked against the image batch."""
    tensor = _as_tensor(value, f"attributions[{name!r}]")
    if tensor.dim() == 3:
        tensor = tensor.reshape(1, -1, *tensor.shape[-2:]) if single else tensor[:, None]
    elif single and tensor.dim() == 2:
        tensor = tensor[None, None]
    elif tensor.dim() != 4:
        raise ValueError(
            f"attributions[{name!r}] must be {'HW, CHW or 1CHW' if single else 'BHW or BCHW'} "
            f"for this image, got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] != batch:
        raise ValueError(
            f"attributions[{name!r}] has batch size {tensor.shape[0]} but image has {batch}"
        )
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"attributions[{name!r}] contains NaN or infinite values")
    return tensor


def _mask_batch(
    mask: TensorOrTuple | None, batch: int, single: bool, size: tuple[int, int]
) -> np.ndarray | None:
    if mask is None:
        return None
    tensor = _as_tensor(mask, "mask")
    if tensor.dim() == 2 and single:
        tensor = tensor[None]
    elif tensor.dim() == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 3 or tensor.shape[0] != batch or tuple(tensor.shape[-2:]) != size:
        raise ValueError(
            f"mask must have shape {(batch, *size)} (or {(batch, 1, *size)}"
            f"{', or HW for a single image' if single else ''}) to match image, "
            f"got {tuple(tensor.shape)}"
        )
    return tensor.float().cpu().numpy()


def _signed_choices(
    signed: bool | Mapping[str, bool] | None, names: Sequence[str]
) -> dict[str, bool | None]:
    """Per method: ``True``/``False`` as asked, ``None`` to decide from the values."""
    if signed is None or isinstance(signed, bool):
        return {name: signed for name in names}
    if not isinstance(signed, Mapping):
        raise TypeError(
            f"signed must be None, a bool or a dict of method name -> bool, "
            f"got {type(signed).__name__}"
        )
    unknown = sorted(set(signed) - set(names))
    if unknown:
        raise ValueError(f"signed names methods not in attributions: {unknown}")
    return {name: signed.get(name) for name in names}


def _colour_limit(values: np.ndarray, percentile: float) -> float:
    """A robust positive limit: the ``percentile`` of ``|values|``, never 0."""
    magnitudes = np.abs(values)
    if magnitudes.size == 0:
        return 1.0
    limit = float(np.percentile(magnitudes, percentile))
    if limit <= 0:
        limit = float(magnitudes.max())
    return limit if limit > 0 else 1.0


def plot_attributions(
    image: TensorOrTuple,
    attributions: Mapping[str, TensorOrTuple],
    *,
    signed: bool | Mapping[str, bool] | None = None,
    mask: TensorOrTuple | None = None,
    overlay: bool = True,
    ncols: int | None = None,
    colorbar: bool | str = False,
    percentile: float = 99.0,
    cmap_signed: str = "RdBu_r",
    cmap_unsigned: str = "inferno",
    alpha: float = 0.75,
    row_labels: Sequence[str] | None = None,
    panel_size: float = 2.2,
) -> tuple[Figure, np.ndarray]:
    """Show images and their attribution maps, one row per image, one column per method.

    A row is the input (``mask`` outlined), then one panel per entry of ``attributions``
    (channels summed, coarse maps upsampled). Tuples stand for their first tensor.

    Parameters
    ----------
    image : Tensor
        ``(C, H, W)``, ``(H, W)`` or ``(B, C, H, W)``; min-max scaled if outside [0, 1].
    attributions : dict of str to Tensor
        Method name to map ``(B, C, h, w)`` or ``(B, h, w)`` (no ``B`` for one image).
    signed : None, bool or dict of str to bool
        Diverging colormap centred at 0, or magnitudes; ``None`` (also for names a dict
        leaves out): signed when any value is negative.
    mask : Tensor, optional
        Ground truth ``(B, H, W)`` or ``(B, 1, H, W)`` (``(H, W)`` for one image).
    overlay, alpha : bool, float
        Draw each map over a grey copy of the image, up to opacity ``alpha`` where larger.
    ncols, panel_size : int, float
        Panels per grid row (default: one row per image); side of a panel in inches.
    colorbar : bool or {"each", "shared"}
        A colour bar per map, or one per kind (signed, unsigned) with shared limits.
    percentile, cmap_signed, cmap_unsigned : float, str, str
        Colour limits are this percentile of ``|map|`` (100: the maximum); colormaps.
    row_labels : sequence of str, optional
        One label per image, beside its input panel.

    Returns
    -------
    (Figure, numpy.ndarray of Axes)
        Axes ``(grid rows, ncols)``; heat maps have gid ``"attribution"``, mask outlines
        ``"mask-outline"``.

    Examples
    --------
    >>> maps = {"saliency": torch.rand(2, 3, 16, 16), "grad-cam": torch.randn(2, 1, 4, 4)}
    >>> fig, axes = plot_attributions(torch.rand(2, 3, 16, 16), maps, colorbar="shared")
    >>> axes.shape, [ax.get_title() for ax in axes[0]]
    ((2, 3), ['input', 'saliency', 'grad-cam'])
    >>> plt.close(fig)
    """
    _check_plot_options(attributions, colorbar, percentile, alpha)
    images, single = _image_batch(image)
    batch, size = images.shape[0], (images.shape[-2], images.shape[-1])
    maps, is_signed = _reduced_maps(attributions, signed, batch, single, size)
    masks = _mask_batch(mask, batch, single, size)
    if row_labels is not None and len(row_labels) != batch:
        raise ValueError(f"row_labels needs {batch} labels (one per image), got {len(row_labels)}")
    fig, axes, panel = _panel_grid(batch, ["input", *maps], ncols, panel_size)
    limits = _shared_limits(maps, is_signed, percentile) if colorbar == "shared" else {}
    rgb = _displayable(images)
    grey = rgb.mean(axis=-1)
    first_image_of_kind: dict[bool, AxesImage] = {}
    for b in range(batch):
        _draw_input(panel(b, 0), rgb[b], None if masks is None else masks[b],
                    None if row_labels is None else str(row_labels[b]))
        for index, (name, values) in enumerate(maps.items(), start=1):
            kind = is_signed[name]
            cmap = cmap_signed if kind else cmap_unsigned
            limit = limits[kind] if limits else _colour_limit(values[b], percentile)
            heat = _draw_map(panel(b, index), values[b], limit, cmap, kind,
                             grey[b] if overlay else None, alpha)
            first_image_of_kind.setdefault(kind, heat)
            if colorbar in (True, "each"):
                fig.colorbar(heat, ax=panel(b, index), fraction=0.046, pad=0.02)
    if colorbar == "shared":
        _shared_colorbars(fig, axes, first_image_of_kind)
    return fig, axes


def _draw_map(
    ax: Axes, values: np.ndarray, limit: float, cmap: str, signed: bool,
    grey: np.ndarray | None, alpha: float,
) -> AxesImage:
    """The heat map of ``values`` (over ``grey`` when given, more opaque where larger)."""
    weight = None
    if grey is not None:
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        weight = alpha * np.sqrt(np.clip(np.abs(values) / limit, 0, 1))
    heat = ax.imshow(values, cmap=cmap, vmin=-limit if signed else 0.0, vmax=limit,
                     alpha=weight, interpolation="nearest")
    heat.set_gid(ATTRIBUTION_GID)
    return heat


def _check_plot_options(
    attributions: object, colorbar: object, percentile: float, alpha: float
) -> None:
    if not isinstance(attributions, Mapping):
        raise TypeError(
            "attributions must be a dict of method name -> tensor, "
            f"got {type(attributions).__name__}"
        )
    if colorbar not in (True, False, "each", "shared"):
        raise ValueError(f"colorbar must be True, False, 'each' or 'shared', got {colorbar!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _reduced_maps(
    attributions: Mapping[str, TensorOrTuple], signed: bool | Mapping[str, bool] | None,
    batch: int, single: bool, size: tuple[int, int],
) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """Per method name, its ``(B, H, W)`` map (channels summed, of magnitudes when
    unsigned, upsampled bilinearly) and whether it is shown signed."""
    names = [str(name) for name in attributions]
    choices = _signed_choices(signed, names)
    maps: dict[str, np.ndarray] = {}
    is_signed: dict[str, bool] = {}
    for key, name in zip(attributions, names):
        raw = _raw_attribution(attributions[key], name, batch, single)
        choice = choices[name]
        is_signed[name] = bool((raw < 0).any()) if choice is None else bool(choice)
        values = (raw if is_signed[name] else raw.abs()).float()
        summed = per_pixel_map(values, batch, size, channel_reduction="sum")
        maps[name] = summed[:, 0].cpu().numpy()
    return maps, is_signed


def _shared_limits(
    maps: dict[str, np.ndarray], is_signed: dict[str, bool], percentile: float
) -> dict[bool, float]:
    """One colour limit per kind (signed, unsigned) over all maps of that kind."""
    return {
        kind: _colour_limit(
            np.concatenate([maps[n].ravel() for n in maps if is_signed[n] == kind]), percentile
        )
        for kind in (True, False)
        if any(is_signed[n] == kind for n in maps)
    }


def _shared_colorbars(fig: Figure, axes: np.ndarray, heats: dict[bool, AxesImage]) -> None:
    """One opaque colour bar per kind, for the whole grid."""
    for kind, heat in heats.items():
        bar = fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=0.8)
        bar.set_label("signed attribution" if kind else "attribution magnitude")
        assert bar.solids is not None  # a colorbar of an image is always filled
        bar.solids.set_alpha(1)


def _panel_grid(
    batch: int, titles: Sequence[str], ncols: int | None, panel_size: float
) -> tuple[Figure, np.ndarray, Callable[[int, int], Axes]]:
    """The figure, its axes and ``panel(b, index)``: image ``b``'s panel ``index``; the
    first image's panels carry ``titles``."""
    panels = len(titles)
    ncols = panels if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    rows_per_image = math.ceil(panels / ncols)
    fig, axes = plt.subplots(
        batch * rows_per_image, ncols, squeeze=False, layout="constrained",
        figsize=(panel_size * ncols, panel_size * batch * rows_per_image),
    )

    def panel(b: int, index: int) -> Axes:
        return axes[b * rows_per_image + index // ncols, index % ncols]

    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    for index in range(panels, rows_per_image * ncols):
        for b in range(batch):
            panel(b, index).set_axis_off()
    for index, title in enumerate(titles):
        panel(0, index).set_title(title, fontsize="medium")
    return fig, axes, panel


def _draw_input(ax: Axes, rgb: np.ndarray, mask: np.ndarray | None, label: str | None) -> None:
    ax.imshow(rgb, interpolation="nearest")
    if mask is not None and mask.min() != mask.max():
        outline = ax.contour(mask, levels=[0.5], colors="lime", linewidths=1.2)
        outline.set_gid(MASK_OUTLINE_GID)
    if label is not None:
        ax.set_ylabel(label)


_CURVE_VALUE_FIELDS = ("values", "scores", "allegiance")


def _curve_arrays(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fractions, values)`` of one entry of :func:`plot_curves`' ``results``, checked."""
    field = next((f for f in _CURVE_VALUE_FIELDS if hasattr(value, f)), None)
    if isinstance(value, Mapping):
        if "fractions" not in value or "values" not in value:
            raise ValueError(
                f"results[{name!r}] is a dict without 'fractions' and 'values' keys "
                f"(got {sorted(map(str, value))})"
            )
        fractions, values = value["fractions"], value["values"]
    elif hasattr(value, "fractions") and field is not None:
        fractions, values = value.fractions, getattr(value, field)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        fractions, values = value
    else:
        raise TypeError(
            f"results[{name!r}] must be a (fractions, values) pair, a dict with those keys "
            f"or a record with 'fractions' and 'values', 'scores' or 'allegiance' "
            f"attributes, got {type(value).__name__}"
        )

    def to_numpy(array: Any) -> np.ndarray:
        if isinstance(array, torch.Tensor):
            array = array.detach().float().cpu().numpy()
        return np.asarray(array, dtype=float)

    x, y = to_numpy(fractions), to_numpy(values)
    if x.ndim != 1 or y.ndim not in (1, 2) or y.shape[-1] != x.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"results[{name!r}]: fractions must be 1-D with at least two steps and values "
            f"(steps,) or (batch, steps) with as many steps; got {x.shape} and {y.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"results[{name!r}] contains NaN or infinite values")
    return x, y


def _draw_curve(ax: Axes, name: str, value: Any, show_auc: bool, band: bool) -> None:
    """The mean curve of one method (AUC in its label), with a one-std band when batched."""
    x, y = _curve_arrays(name, value)
    mean = y.mean(axis=0) if y.ndim == 2 else y
    area = float(np.sum((x[1:] - x[:-1]) * (mean[1:] + mean[:-1]) / 2))  # trapezoids
    label = f"{name} (AUC {area:.3f})" if show_auc else name
    (line,) = ax.plot(x, mean, label=label, linewidth=1.8)
    if band and y.ndim == 2 and y.shape[0] > 1:
        spread = y.std(axis=0)
        ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)


def plot_curves(
    results: Mapping[str, Any],
    *,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "fraction of pixels perturbed",
    ylabel: str = "model score",
    show_auc: bool = True,
    band: bool = True,
) -> tuple[Figure, Axes]:
    """Draw several methods' deletion, insertion or allegiance curves on one axes.

    Parameters
    ----------
    results : dict of str to curve
        Method name to a pair ``(fractions, values)``, a dict with those keys, or a
        metric record with ``fractions`` and ``values``, ``scores`` or ``allegiance``.
        ``values`` is ``(steps,)`` or ``(batch, steps)`` (the mean is drawn).
    ax : Axes, optional
        Draw into these axes (default: a new figure).
    title, xlabel, ylabel : str
        Axis text.
    show_auc, band : bool
        Put the trapezoid area under each (mean) curve in its legend entry; shade one
        standard deviation around batched curves.

    Returns
    -------
    (Figure, Axes)

    Examples
    --------
    >>> steps = torch.linspace(0, 1, 11)
    >>> fig, ax = plot_curves({"saliency": (steps, 1 - steps),
    ...                        "random": {"fractions": steps, "values": 1 - steps**0.5}})
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['saliency (AUC 0.500)', 'random (AUC 0.339)']
    >>> plt.close(fig)
    """
    if not isinstance(results, Mapping):
        raise TypeError(
            f"results must be a dict of method name -> curve, got {type(results).__name__}"
        )
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    else:
        fig = cast(Figure, ax.figure)  # a SubFigure for axes of a subfigure
    for name, value in results.items():
        _draw_curve(ax, str(name), value, show_auc, band)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if results:
        ax.legend(fontsize="small")
    return fig, ax
