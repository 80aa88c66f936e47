"""The rule that decides whether a paper's claim held in our measurements.

Every claim compares a *method* with a *baseline* on one metric, seed by seed. With
``d_s`` the improvement of the method over the baseline on seed ``s`` (``method -
baseline`` when higher is better, ``baseline - method`` when lower is better):

* ``spread`` is the sample standard deviation of ``d_s`` over seeds (0 for one seed);
* a *superiority* claim ("the method is better") **held** when
  ``mean(d) - spread > 0``: better on average, by more than the seed-to-seed spread;
* a *non-inferiority* claim ("the method costs at most ``margin``") held when
  ``mean(d) - spread > -margin``.

With a single seed the rule reduces to "better on average" (no spread is known), which
the report says next to every verdict.

A claim whose baseline or method row (or metric) was never recorded is not dropped: it
gets a *not measured* verdict (:func:`not_measured`), never held, that names what is
missing, so a misspelt row shows up in the report instead of erasing the claim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "RULE_TEXT",
    "Claim",
    "ClaimVerdict",
    "judge",
    "not_measured",
    "spread",
    "summarize",
]

RULE_TEXT = (
    "A claim **held** when the mean over seeds of the method's improvement over the "
    "baseline exceeds the improvement's standard deviation over seeds (sample std; 0 "
    "with one seed), i.e. `mean(d) - std(d) > 0`; a non-inferiority claim with margin "
    "`m` held when `mean(d) - std(d) > -m`. `d` is signed so that positive means better."
)


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation (``ddof=1``) of ``values``; 0.0 for fewer than two.

    Examples
    --------
    >>> spread([1.0, 2.0, 3.0])
    1.0
    >>> spread([0.5])
    0.0
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(values: Sequence[float]) -> dict[str, object]:
    """``{"per_seed": [...], "mean": m, "std": s}`` for one metric measured on each seed.

    Examples
    --------
    >>> summarize([1.0, 3.0])
    {'per_seed': [1.0, 3.0], 'mean': 2.0, 'std': 1.4142135623730951}
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    return {"per_seed": values, "mean": sum(values) / len(values), "std": spread(values)}


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as a comparison the study can measure.

    Parameters
    ----------
    text : str
        The claim in words.
    table : str
        Name of the section's table holding both rows.
    baseline, method : str
        Row names in that table.
    metric : str
        Column name.
    better : {"higher", "lower"}
        Which direction of the metric is better.
    margin : float
        0 for "the method is better"; ``> 0`` for "the method is worse by at most
        ``margin``" (non-inferiority).
    paper : str
        The paper's own numbers for this comparison, in words ("" where the paper
        gives none for it).

    Examples
    --------
    >>> Claim("positive beats original", "SimpleCNN", "original", "positive",
    ...       "black_deletion", "lower").better
    'lower'
    """

    text: str
    table: str
    baseline: str
    method: str
    metric: str
    better: str
    margin: float = 0.0
    paper: str = ""

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', got {self.better!r}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim with the numbers that decided it (see :func:`judge`).

    ``measured`` is ``False`` for a claim whose rows were not recorded
    (:func:`not_measured`): its numbers are NaN, ``seeds`` is 0, it is never held and
    ``missing`` says what was not found.

    Examples
    --------
    >>> claim = Claim("new beats base", "t", "base", "new", "auc", "lower")
    >>> verdict = judge(claim, [0.30, 0.32, 0.31], [0.20, 0.21, 0.22])
    >>> round(verdict.improvement_mean, 3), verdict.seeds, verdict.as_dict()["verdict"]
    (0.1, 3, 'held')
    """

    claim: Claim
    baseline_mean: float
    method_mean: float
    improvement_mean: float
    improvement_spread: float
    seeds: int
    held: bool
    measured: bool = True
    missing: str = ""

    @property
    def verdict(self) -> str:
        """``"held"``, ``"not held"`` or ``"not measured"``."""
        if not self.measured:
            return "not measured"
        return "held" if self.held else "not held"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        record = asdict(self.claim)
        def number(value: float) -> float | None:  # strict JSON has no NaN
            return None if math.isnan(value) else value

        record.update(
            baseline_mean=number(self.baseline_mean),
            method_mean=number(self.method_mean),
            improvement_mean=number(self.improvement_mean),
            improvement_spread=number(self.improvement_spread),
            seeds=self.seeds,
            held=self.held,
            measured=self.measured,
            missing=self.missing,
            verdict=self.verdict,
        )
        return record


def not_measured(claim: Claim, missing: str) -> ClaimVerdict:
    """The verdict of a claim the study has no numbers for: never held, says what is missing.

    Parameters
    ----------
    claim : Claim
        The claim that could not be decided.
    missing : str
        What was not found (a table, a row or a metric), shown in the report.

    Examples
    --------
    >>> claim = Claim("new beats base", "t", "base", "new", "auc", "lower")
    >>> verdict = not_measured(claim, "row 'base' of table 't' has no 'auc'")
    >>> verdict.verdict, verdict.held, verdict.seeds
    ('not measured', False, 0)
    """
    nan = float("nan")
    return ClaimVerdict(
        claim=claim,
        baseline_mean=nan,
        method_mean=nan,
        improvement_mean=nan,
        improvement_spread=nan,
        seeds=0,
        held=False,
        measured=False,
        missing=missing,
    )


def judge(claim: Claim, baseline: Sequence[float], method: Sequence[float]) -> ClaimVerdict:
    """Decide ``claim`` from per-seed values of the baseline and the method.

    Parameters
    ----------
    claim : Claim
        What is compared, and in which direction.
    baseline, method : sequence of float
        The metric on each seed (paired: entry ``s`` of both comes from seed ``s``).

    Returns
    -------
    ClaimVerdict
        ``held`` is ``mean(d) - spread(d) > -margin`` (see the module docstring); a
        NaN anywhere makes it not held.

    Examples
    --------
    >>> claim = Claim("lower is better", "t", "base", "new", "auc", "lower")
    >>> judge(claim, [0.30, 0.32, 0.31], [0.20, 0.21, 0.22]).verdict
    'held'
    >>> judge(claim, [0.30, 0.20], [0.25, 0.26]).verdict  # better on average, within spread
    'not held'
    """
    if len(baseline) != len(method) or not baseline:
        raise ValueError(
            "baseline and method need one value per seed and the same number of seeds, "
            f"got {len(baseline)} and {len(method)}"
        )
    sign = 1.0 if claim.better == "higher" else -1.0
    improvements = [sign * (float(m) - float(b)) for b, m in zip(baseline, method)]
    mean = sum(improvements) / len(improvements)
    deviation = spread(improvements)
    # NaN compares False, so a missing number never makes a claim hold.
    held = mean - deviation > -claim.margin
    return ClaimVerdict(
        claim=claim,
        baseline_mean=sum(float(b) for b in baseline) / len(baseline),
        method_mean=sum(float(m) for m in method) / len(method),
        improvement_mean=mean,
        improvement_spread=deviation,
        seeds=len(improvements),
        held=held,
    )
