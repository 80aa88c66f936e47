"""A section of the study: measurements per seed, the paper's claims and their verdicts.

:class:`StudyContext` holds the mechanics every section shares: the per-seed batch of
held-out examples it scores (:meth:`StudyContext.eval_batches`) and the figures drawn
from the first seed's examples (:meth:`StudyContext.save_maps`,
:meth:`StudyContext.save_curves`), so a section module writes only its protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captum_regularized.study.figures import save_curves_figure, save_maps_figure
from captum_regularized.study.model_zoo import ModelZoo
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import (
    Claim,
    ClaimVerdict,
    judge,
    not_measured,
    summarize,
)

__all__ = ["EvalBatch", "Section", "StudyContext"]

NO_MASKS_NOTE = "No ground-truth masks (image folder): the mask metrics are skipped."


@dataclass(frozen=True)
class EvalBatch:
    """The held-out examples one seed's models are scored on (on the study's device).

    ``masks`` is ``None`` without ground truth; ``first`` marks the first seed, whose
    examples the figures show.
    """

    seed: int
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    first: bool


@dataclass
class StudyContext:
    """What every section needs: sizes, data, the shared model zoo and the output folder.

    Figures are written as ``out / f"{figure_prefix}{name}.png"`` (the runner prefixes
    the data set's key, so the sections of two data sets never overwrite each other).

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> context = tiny_context()
    >>> batch = next(context.eval_batches())
    >>> batch.seed, batch.first, tuple(batch.images.shape), tuple(batch.masks.shape)
    (0, True, (8, 3, 32, 32), (8, 1, 32, 32))
    """

    settings: StudySettings
    data: StudyData
    zoo: ModelZoo
    out: Path
    seeds: list[int]
    device: str = "cpu"
    log: Callable[[str], None] = print
    figure_prefix: str = ""

    def eval_batches(self) -> Iterator[EvalBatch]:
        """Per seed, its first ``settings.eval_examples`` held-out images, labels, masks."""
        count = self.settings.eval_examples
        for seed in self.seeds:
            seed_data = self.data.for_seed(seed)
            masks = seed_data.test_masks
            yield EvalBatch(
                seed=seed,
                images=seed_data.test_images[:count].to(self.device),
                labels=seed_data.test_labels[:count].to(self.device),
                masks=None if masks is None else masks[:count].to(self.device),
                first=seed == self.seeds[0],
            )

    def note_missing_masks(self, section: Section) -> None:
        """Say in ``section`` that the mask metrics are skipped, when there are no masks."""
        if not self.data.has_masks:
            section.notes.append(NO_MASKS_NOTE)

    def save_maps(
        self, section: Section, name: str, maps: Mapping[str, torch.Tensor], caption: str,
        *, masks: bool = True,
    ) -> None:
        """Draw ``maps`` (each already cut to ``figure_rows``) over the first seed's
        examples, with the mask outlines when ``masks`` and known; add it to ``section``."""
        seed_data = self.data.for_seed(self.seeds[0])
        rows = slice(0, self.settings.figure_rows)
        outlines = seed_data.test_masks
        file = save_maps_figure(
            self.out / f"{self.figure_prefix}{name}.png", seed_data.test_images[rows], maps,
            masks=outlines[rows] if masks and outlines is not None else None,
        )
        section.figures.append((file.name, f"{caption} (seed {self.seeds[0]})"))

    def save_curves(
        self, section: Section, name: str, panels: Mapping[str, Mapping[str, Any]],
        caption: str, *, ylabel: str, xlabel: str,
    ) -> None:
        """Draw the first seed's curves, one panel per entry; add the figure to ``section``."""
        file = save_curves_figure(
            self.out / f"{self.figure_prefix}{name}.png", panels, ylabel=ylabel, xlabel=xlabel
        )
        section.figures.append((file.name, f"{caption} (seed {self.seeds[0]})"))


@dataclass
class Section:
    """Tables of per-seed measurements, the claims they decide, notes and figures.

    ``tables[table][row][metric]`` is the list of the metric's values, one per seed.

    Examples
    --------
    >>> section = Section("demo", "Demo", "A paper", "New beats old.", "Protocol.")
    >>> for seed, (old, new) in enumerate([(0.3, 0.2), (0.31, 0.21)]):
    ...     section.record("model", "old", "auc", old)
    ...     section.record("model", "new", "auc", new)
    >>> section.claims.append(Claim("new < old", "model", "old", "new", "auc", "lower"))
    >>> [v.verdict for v in section.verdicts()]
    ['held']
    """

    key: str
    title: str
    paper: str
    paper_claim: str
    protocol: str
    tables: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    metric_notes: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def record(self, table: str, row: str, metric: str, value: float) -> None:
        """Append one seed's ``value`` of ``metric`` for ``row`` of ``table``."""
        column = self.tables.setdefault(table, {}).setdefault(row, {}).setdefault(metric, [])
        column.append(float(value))

    def _missing(self, claim: Claim) -> str:
        """What of ``claim``'s table, rows and metric was never recorded ("" if nothing)."""
        if claim.table not in self.tables:
            return f"table {claim.table!r} was not recorded"
        rows = self.tables[claim.table]
        gaps = []
        for row in (claim.baseline, claim.method):
            if row not in rows:
                gaps.append(f"row {row!r} is not in table {claim.table!r}")
            elif not rows[row].get(claim.metric):
                gaps.append(f"row {row!r} of table {claim.table!r} has no {claim.metric!r}")
        return "; ".join(gaps)

    def verdicts(self) -> list[ClaimVerdict]:
        """One verdict per claim, in order: judged by :func:`judge` where both rows were
        measured, "not measured" (:func:`not_measured`, naming what is missing) otherwise.

        Examples
        --------
        >>> section = Section("demo", "Demo", "A paper", "New beats old.", "Protocol.")
        >>> section.record("model", "old", "auc", 0.3)
        >>> section.claims.append(Claim("typo", "model", "old", "nwe", "auc", "lower"))
        >>> [(v.verdict, v.missing) for v in section.verdicts()]
        [('not measured', "row 'nwe' is not in table 'model'")]
        """
        verdicts = []
        for claim in self.claims:
            missing = self._missing(claim)
            if missing:
                verdicts.append(not_measured(claim, missing))
                continue
            rows = self.tables[claim.table]
            verdicts.append(
                judge(claim, rows[claim.baseline][claim.metric], rows[claim.method][claim.metric])
            )
        return verdicts

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record: tables as mean/std/per-seed, claims with verdicts."""
        return {
            "title": self.title,
            "paper": self.paper,
            "paper_claim": self.paper_claim,
            "protocol": self.protocol,
            "metrics": self.metric_notes,
            "tables": {
                table: {
                    row: {metric: summarize(values) for metric, values in metrics.items()}
                    for row, metrics in rows.items()
                }
                for table, rows in self.tables.items()
            },
            "claims": [verdict.as_dict() for verdict in self.verdicts()],
            "notes": self.notes,
            "figures": [{"file": file, "caption": caption} for file, caption in self.figures],
        }
