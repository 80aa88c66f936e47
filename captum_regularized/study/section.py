"""A section of the study: measurements per seed, the paper's claims and their verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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

__all__ = ["Section", "StudyContext"]


@dataclass
class StudyContext:
    """What every section needs: sizes, data, the shared model zoo and the output folder."""

    settings: StudySettings
    data: StudyData
    zoo: ModelZoo
    out: Path
    seeds: list[int]
    device: str = "cpu"
    log: Callable[[str], None] = print


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
