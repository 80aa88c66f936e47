"""A section of the study: per-example measurements per seed, a paper's claims, verdicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captum_regularized.study.figures import save_curves_figure, save_maps_figure
from captum_regularized.study.model_zoo import MIN_MAP_SIZE, ModelZoo, TrainedModel
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import Claim, ClaimVerdict, judge, not_measured, summarize

__all__ = ["EvalBatch", "Section", "StudyContext"]

NO_MASKS_NOTE = "No ground-truth masks (image folder): the mask metrics are skipped."


@dataclass(frozen=True)
class EvalBatch:
    """The held-out examples one seed's models are scored on (``first``: the figures' seed)."""

    seed: int
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    first: bool


@dataclass
class StudyContext:
    """What every section needs: sizes, data, the shared model zoo and the output folder.

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
            yield EvalBatch(seed=seed, images=seed_data.test_images[:count].to(self.device),
                            labels=seed_data.test_labels[:count].to(self.device),
                            masks=None if masks is None else masks[:count].to(self.device),
                            first=seed == self.seeds[0])

    def note_missing_masks(self, section: Section) -> None:
        """Say in ``section`` that the mask metrics are skipped, when there are no masks."""
        if not self.data.has_masks:
            section.notes.append(NO_MASKS_NOTE)

    def save_maps(
        self, section: Section, name: str, maps: Mapping[str, torch.Tensor], caption: str,
        *, masks: bool = True,
    ) -> None:
        """Draw ``maps`` over the first seed's examples; add the figure to ``section``."""
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


Values = list[list[float]]  # one list of per-example values per seed


@dataclass
class Section:
    """Per-example measurements per seed, the models behind each row, claims, notes.

    ``tables[table][row][metric][s]`` holds seed ``s``'s per-example values. A claim on
    a model below its accuracy floor, or on a CAM map coarser than 4 x 4, is "not
    measured".

    Examples
    --------
    >>> section = Section("demo", "Demo", 1, "A paper", "New beats old.", "Protocol.")
    >>> for seed in range(3):
    ...     section.record("model", "old", "auc", torch.full((50,), 0.3) + 0.01 * seed)
    ...     section.record("model", "new", "auc", torch.full((50,), 0.2) + 0.01 * seed)
    >>> section.claims.append(Claim(1, "new < old", "model", "old", "new", "auc", "lower"))
    >>> [v.verdict for v in section.verdicts()]
    ['held']
    """

    key: str
    title: str
    paper: int
    citation: str
    paper_claim: str
    protocol: str
    tables: dict[str, dict[str, dict[str, Values]]] = field(default_factory=dict)
    models: dict[tuple[str, str], list[TrainedModel]] = field(default_factory=dict)
    cam_rows: set[tuple[str, str]] = field(default_factory=set)
    metric_notes: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def record(
        self, table: str, row: str, metric: str, values: torch.Tensor | Sequence[float] | float
    ) -> None:
        """Append one seed's per-example ``values`` of ``metric`` for ``row`` of ``table``."""
        if isinstance(values, torch.Tensor):
            values = values.detach()
        column = self.tables.setdefault(table, {}).setdefault(row, {}).setdefault(metric, [])
        column.append(torch.as_tensor(values, dtype=torch.float64).flatten().cpu().tolist())

    def uses(self, table: str, row: str, trained: TrainedModel, *, cam: bool = False) -> None:
        """Say that ``row`` of ``table`` was measured on ``trained`` (``cam``: at its CAM layer)."""
        self.models.setdefault((table, row), []).append(trained)
        if cam:
            self.cam_rows.add((table, row))

    def _map_size(self, claim: Claim) -> tuple[int, int] | None:
        for row in (claim.method, claim.baseline):
            if (claim.table, row) in self.cam_rows:
                sizes = [m.map_size for m in self.models[(claim.table, row)] if m.map_size]
                if sizes:
                    return min(sizes, key=min)  # the map with the smallest side
        return None

    def _why_not_measured(self, claim: Claim, map_size: tuple[int, int] | None) -> str:
        rows = self.tables.get(claim.table)
        if rows is None:
            return f"table {claim.table!r} was not recorded"
        for row in (claim.baseline, claim.method):
            if not (rows.get(row) or {}).get(claim.metric):
                return f"row {row!r} of table {claim.table!r} has no {claim.metric!r}"
        for row in (claim.baseline, claim.method):
            for trained in self.models.get((claim.table, row), []):
                if not trained.scored:
                    return trained.unscored_reason()
        if map_size is not None and min(map_size) < MIN_MAP_SIZE:
            return (f"the CAM map is {map_size[0]} x {map_size[1]}, coarser than "
                    f"{MIN_MAP_SIZE} x {MIN_MAP_SIZE}: not scored")
        return ""

    def verdicts(self) -> list[ClaimVerdict]:
        """One verdict per claim: :func:`judge`, or "not measured" with the reason."""
        verdicts = []
        for claim in self.claims:
            size = self._map_size(claim)
            missing = self._why_not_measured(claim, size)
            if missing:
                verdicts.append(not_measured(claim, missing, map_size=size))
                continue
            rows = self.tables[claim.table]
            verdicts.append(judge(claim, rows[claim.baseline][claim.metric],
                                  rows[claim.method][claim.metric], map_size=size))
        return verdicts

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record: tables as per-seed means, pooled mean and spread."""
        return {
            "title": self.title, "paper": self.paper, "metrics": self.metric_notes,
            "tables": {
                table: {
                    row: {metric: summarize(values) for metric, values in metrics.items()}
                    for row, metrics in rows.items()
                }
                for table, rows in self.tables.items()
            },
            "notes": self.notes,
            "figures": [{"file": file, "caption": caption} for file, caption in self.figures],
        }

    def claim_records(self, data_key: str) -> list[dict[str, object]]:
        """Every verdict as a ``results.json`` claim record of data set ``data_key``."""
        return [
            {"data": data_key, "section": self.key, **verdict.as_dict()}
            for verdict in self.verdicts()
        ]
