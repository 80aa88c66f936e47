"""A section of the study: measurements per seed, the paper's claims and their verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from captum_regularized.study.model_zoo import ModelZoo
from captum_regularized.study.settings import StudySettings
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import Claim, ClaimVerdict, judge, summarize

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

    def verdicts(self) -> list[ClaimVerdict]:
        """Every claim whose two rows were measured, judged by :func:`judge`."""
        verdicts = []
        for claim in self.claims:
            rows = self.tables.get(claim.table, {})
            baseline = rows.get(claim.baseline, {}).get(claim.metric)
            method = rows.get(claim.method, {}).get(claim.metric)
            if baseline and method:
                verdicts.append(judge(claim, baseline, method))
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
