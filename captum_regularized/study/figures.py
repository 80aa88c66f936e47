"""The applications' figures (study and demo): example maps and curves, written as PNG files.

Importing this module leaves matplotlib's backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from captum_regularized.visualization import plot_attributions, plot_curves

__all__ = ["save_curves_figure", "save_maps_figure"]


def save_maps_figure(
    path: Path,
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    *,
    masks: torch.Tensor | None = None,
    row_labels: Sequence[str] | None = None,
    dpi: int = 90,
) -> Path:
    """Write a PNG grid of ``images`` (rows, with ``masks`` outlined) and ``maps`` (columns)
    to ``path`` (see :func:`~captum_regularized.visualization.plot_attributions`).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> save_maps_figure(folder / "m.png", torch.rand(2, 3, 8, 8),
    ...                  {"map": torch.rand(2, 1, 8, 8)}).stat().st_size > 0
    True
    """
    figure, _ = plot_attributions(
        images.detach().cpu(), {k: v.detach().cpu() for k, v in maps.items()},
        mask=None if masks is None else masks.cpu(), row_labels=row_labels,
    )
    try:
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def save_curves_figure(
    path: Path, panels: Mapping[str, Mapping[str, Any]], *, ylabel: str, xlabel: str
) -> Path:
    """One axes per panel (title to ``{method: curve}``), side by side, written to ``path``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> curve = (torch.linspace(0, 1, 5), torch.rand(5))
    >>> save_curves_figure(folder / "c.png", {"model": {"a": curve}}, ylabel="y",
    ...                    xlabel="x").stat().st_size > 0
    True
    """
    figure = Figure(figsize=(4.5 * len(panels), 3.4))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        plot_curves(curves, ax=ax, title=title, ylabel=ylabel, xlabel=xlabel)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path
