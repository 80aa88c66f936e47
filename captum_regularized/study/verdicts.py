"""The rule that decides whether a paper's claim held in our measurements.

Seed ``s`` gives ``n_s`` paired per-example differences ``d`` (method - baseline, or
the reverse when lower is better: positive means the method is better).

* **effect**: the mean of ``d`` pooled over all examples of all seeds.
* **interval**: the 95 % percentile interval of a two-level bootstrap (seeds, then
  examples within each drawn seed, with replacement), widened for ``S >= 2`` seeds to
  cover Student's ``t`` interval of the seed means, ``mean +- t(S - 1) sd / sqrt(S)``.
* **verdict** (margin ``m >= 0``): *held* when the interval's low end and every seed's
  mean are above ``-m``; *not held* when its high end is below ``-m``; otherwise
  *inconclusive* (also for a non-finite value); *not measured* without numbers.

Why the interval is widened: :doc:`/design_notes/data_and_study`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["RULE_TEXT", "VERDICTS", "Claim", "ClaimVerdict", "count_verdicts", "judge",
           "not_measured", "spread", "summarize"]

RULE_TEXT = (
    "For each claim, `d` is the per-example difference between the method and the "
    "baseline, signed so that positive means the method is better. The **effect** is the "
    "mean of `d` pooled over all held-out examples of all seeds; its 95 % interval comes "
    "from a two-level bootstrap (4000 resamples that draw seeds with replacement, then "
    "examples with replacement within each drawn seed; percentile interval), widened "
    "where needed to cover Student's t interval of the per-seed means (S - 1 degrees of "
    "freedom), which the bootstrap alone is too narrow for with three seeds. A claim "
    "**held** when the interval lies above `-m` (`m` = 0 unless the claim allows a margin) "
    "*and* every seed's mean difference is above `-m`; it is **not held** when the "
    "interval lies below `-m`; otherwise it is **inconclusive** (also when any value is "
    "not finite)."
)
VERDICTS = ("held", "not held", "inconclusive", "not measured")
"""The four verdicts, in report order."""


def _num(x: float) -> str:
    return f"{x:+.3g}"


def _size(map_size: Sequence[int] | None) -> list[int] | None:
    return None if map_size is None else [int(x) for x in map_size]


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation (``ddof=1``) of ``values``; 0.0 for fewer than two.

    Examples
    --------
    >>> spread([1.0, 2.0, 3.0]), spread([0.5])
    (1.0, 0.0)
    """
    v = [float(x) for x in values]
    if len(v) < 2:
        return 0.0
    mean = sum(v) / len(v)
    return math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))


def _vector(values: Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D sequence of per-example values, "
                         f"got shape {tuple(t.shape)}")
    return t


def summarize(per_seed: Sequence[Sequence[float] | torch.Tensor]) -> dict[str, object]:
    """Per-seed means, pooled mean, std of the seed means and example count of one metric.

    Examples
    --------
    >>> summarize([[1.0, 3.0], [4.0, 4.0, 4.0]])
    {'per_seed': [2.0, 4.0], 'mean': 3.2, 'std': 1.4142135623730951, 'examples': 5}
    """
    if len(per_seed) == 0:
        raise ValueError("summarize needs at least one seed")
    rows = [_vector(v, f"seed {s}") for s, v in enumerate(per_seed, start=1)]
    means = [float(r.mean()) for r in rows]
    total = sum(r.numel() for r in rows)
    pooled = float(sum(float(r.sum()) for r in rows) / total)
    return {"per_seed": means, "mean": pooled, "std": spread(means), "examples": total}


@dataclass(frozen=True)
class Claim:
    """One claim of a paper: ``method`` beats ``baseline`` (rows of ``table``) on ``metric``.

    ``better`` is ``"higher"`` or ``"lower"``; ``margin >= 0`` makes it a
    non-inferiority claim; ``extra`` marks our own observation (outside the score).

    Examples
    --------
    >>> Claim(1, "positive beats original", "SimpleCNN", "original", "positive",
    ...       "black_deletion", "lower", paper_value=0.14).better
    'lower'
    """

    paper: int
    text: str
    table: str
    baseline: str
    method: str
    metric: str
    better: str
    paper_value: float | None = None
    paper_note: str = ""
    extra: bool = False
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', got {self.better!r}")
        if not self.margin >= 0:  # also rejects NaN
            raise ValueError(f"margin must be a number >= 0, got {self.margin!r}")


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim with its verdict and the numbers that decided it.

    Examples
    --------
    >>> v = not_measured(Claim(1, "t", "tab", "a", "b", "auc", "lower"), "no row 'b'")
    >>> v.held, v.measured, v.as_dict()["verdict"]
    (False, False, 'not measured')
    """

    claim: Claim
    verdict: str
    reason: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    seed_signs: Sequence[int]
    baseline_mean: float | None
    method_mean: float | None
    examples: int
    map_size: list[int] | None = field(default=None)

    @property
    def held(self) -> bool:
        """Whether the verdict is ``"held"``."""
        return self.verdict == "held"

    @property
    def measured(self) -> bool:
        """Whether the claim had numbers (verdict is not ``"not measured"``)."""
        return self.verdict != "not measured"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record; non-finite numbers become ``None``."""
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        c = asdict(self.claim)
        return {
            "paper": c["paper"], "claim": c["text"], "paper_value": num(c["paper_value"]),
            **{key: c[key] for key in ("paper_note", "extra", "table", "baseline", "method",
                                       "metric", "better", "margin")},
            "effect": num(self.effect), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
            "seed_signs": [int(s) for s in self.seed_signs], "verdict": self.verdict,
            "reason": self.reason, "baseline_mean": num(self.baseline_mean),
            "method_mean": num(self.method_mean), "examples": int(self.examples),
            "map_size": _size(self.map_size),
        }


def not_measured(claim: Claim, reason: str,
                 map_size: Sequence[int] | None = None) -> ClaimVerdict:
    """The verdict of a claim with no numbers; ``reason`` says what is missing."""
    return ClaimVerdict(claim, "not measured", reason, None, None, None, [], None, None, 0,
                        _size(map_size))


_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)  # 1..9 dof
_RESAMPLE_BLOCK = 256  # bootstrap resamples drawn at once (bounds the memory)


def _bootstrap(diffs: list[torch.Tensor], resamples: int, seed: int,
               level: float) -> tuple[float, float]:
    """Percentile interval of the pooled mean under the two-level bootstrap."""
    gen = torch.Generator().manual_seed(seed)
    n = torch.tensor([float(d.numel()) for d in diffs], dtype=torch.float64)
    picks = torch.randint(len(diffs), (resamples, len(diffs)), generator=gen)
    sums = torch.zeros(resamples, len(diffs), dtype=torch.float64)
    for s, d in enumerate(diffs):  # each drawn copy of seed s gets its own example draw
        rows = (picks == s).nonzero()
        for start in range(0, len(rows), _RESAMPLE_BLOCK):
            block = rows[start:start + _RESAMPLE_BLOCK]
            idx = torch.randint(d.numel(), (len(block), d.numel()), generator=gen)
            sums[block[:, 0], block[:, 1]] = d[idx].sum(dim=1)
    stats = sums.sum(dim=1) / n[picks].sum(dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(stats, q).tolist()
    return low, high


def _seed_t_interval(means: list[float], level: float) -> tuple[float, float] | None:
    """Student's t interval of the seed means (``None`` for one seed)."""
    if len(means) < 2:
        return None
    center = sum(means) / len(means)
    if level == 0.95:
        quantile = _T_975[len(means) - 2] if len(means) - 2 < len(_T_975) else 1.96
    else:
        quantile = float(torch.distributions.Normal(0.0, 1.0).icdf(
            torch.tensor((1 + level) / 2, dtype=torch.float64)))
    half = quantile * spread(means) / math.sqrt(len(means))
    return center - half, center + half


def judge(claim: Claim, baseline: Sequence[torch.Tensor | Sequence[float]],
          method: Sequence[torch.Tensor | Sequence[float]], *, resamples: int = 4000,
          seed: int = 0, level: float = 0.95,
          map_size: Sequence[int] | None = None) -> ClaimVerdict:
    """Decide ``claim`` from the paired per-example values of each seed (the module's rule).

    ``baseline[s]`` and ``method[s]`` are seed ``s``'s paired values (1-D tensors or
    lists); ``resamples``, ``seed`` and ``level`` set the bootstrap; ``map_size`` is
    recorded. Returns the :class:`ClaimVerdict`, whose ``reason`` numbers seeds from 1;
    raises ValueError for empty input, different seed counts or unequal lengths.

    Examples
    --------
    >>> claim = Claim(1, "new is lower", "t", "base", "new", "auc", "lower")
    >>> base = [[0.30, 0.32, 0.31, 0.33], [0.29, 0.31, 0.30, 0.32]]
    >>> new = [[0.20, 0.21, 0.22, 0.20], [0.21, 0.20, 0.19, 0.22]]
    >>> v = judge(claim, base, new, resamples=500)
    >>> v.verdict, round(v.effect, 4), v.seed_signs
    ('held', 0.1037, [1, 1])
    """
    if len(baseline) != len(method) or len(baseline) == 0:
        raise ValueError(f"baseline and method need the same, non-zero number of seeds, "
                         f"got {len(baseline)} and {len(method)}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    base = [_vector(b, f"seed {s} baseline") for s, b in enumerate(baseline, start=1)]
    meth = [_vector(m, f"seed {s} method") for s, m in enumerate(method, start=1)]
    for s, (b, m) in enumerate(zip(base, meth), start=1):
        if b.numel() != m.numel():
            raise ValueError(f"seed {s}: baseline has {b.numel()} values, method "
                             f"{m.numel()}; they must be paired example by example")
    sign = 1.0 if claim.better == "higher" else -1.0
    diffs = [sign * (m - b) for b, m in zip(base, meth)]
    total = sum(d.numel() for d in diffs)
    size = _size(map_size)
    means = [float(d.mean()) for d in diffs]
    b_mean = float(sum(float(b.sum()) for b in base) / total)
    m_mean = float(sum(float(m.sum()) for m in meth) / total)
    signs = [0 if not math.isfinite(x) else (x > 0) - (x < 0) for x in means]
    bad = [s + 1 for s, d in enumerate(diffs) if not bool(torch.isfinite(d).all())]
    if bad:
        reason = (f"values were not finite (NaN or infinity) in seed(s) "
                  f"{', '.join(map(str, bad))} of {len(diffs)}, so nothing can be concluded")
        return ClaimVerdict(claim, "inconclusive", reason, None, None, None, signs,
                            b_mean if math.isfinite(b_mean) else None,
                            m_mean if math.isfinite(m_mean) else None, total, size)
    effect = float(sum(float(d.sum()) for d in diffs) / total)
    low, high = _bootstrap(diffs, resamples, seed, level)
    t_interval = _seed_t_interval(means, level)
    if t_interval is not None:
        low, high = min(low, t_interval[0]), max(high, t_interval[1])
    verdict, reason = _decide(claim, low, high, means)
    return ClaimVerdict(claim, verdict, reason, effect, low, high, signs, b_mean, m_mean,
                        total, size)


def _decide(claim: Claim, low: float, high: float, means: list[float]) -> tuple[str, str]:
    """The verdict and its one-sentence reason from the interval and the seed means."""
    seeds, floor = len(means), -claim.margin
    span = f"the interval [{_num(low)}, {_num(high)}]"
    zero = "0" if claim.margin == 0 else f"{_num(floor)} (the margin)"
    behind = [s for s, x in enumerate(means) if not x > floor]
    who = f" and all {seeds} seeds agree" if seeds > 1 else ", from a single seed"
    if low > floor and not behind:
        return "held", f"{span} excludes {zero}{who}"
    if high < floor:
        loser = "the baseline is better" if claim.margin == 0 else "the method loses more"
        return "not held", f"{span} is below {zero}: {loser}"
    if low > floor:
        which = " and ".join(str(s + 1) for s in behind)
        vals = ", ".join(_num(means[s]) for s in behind)
        word = "disagrees in sign" if claim.margin == 0 else f"is not above {_num(floor)}"
        plural = "s" if len(behind) > 1 else ""
        if plural:
            word = word.replace("disagrees", "disagree").replace("is not", "are not")
        return "inconclusive", (f"seed{plural} {which} of {seeds} {word} ({vals}) although "
                                f"{span} excludes {zero}")
    return "inconclusive", f"{span} includes {zero}" + (", from a single seed" if seeds == 1
                                                        else "")


def count_verdicts(verdicts: Iterable[ClaimVerdict | dict], *,
                   extra: bool = False) -> dict[str, int]:
    """How many paper claims (``extra=True``: extra observations) got each verdict, and
    ``"measured"``.

    Examples
    --------
    >>> claim = Claim(1, "t", "tab", "a", "b", "auc", "lower")
    >>> count_verdicts([not_measured(claim, "x").as_dict()])["not measured"]
    1
    >>> count_verdicts([not_measured(claim, "x")], extra=True)["not measured"]
    0
    """
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        record = v.as_dict() if isinstance(v, ClaimVerdict) else v
        if bool(record.get("extra")) != extra:
            continue
        if record["verdict"] not in counts:
            raise ValueError(f"unknown verdict {record['verdict']!r}")
        counts[str(record["verdict"])] += 1
    counts["measured"] = counts["held"] + counts["not held"] + counts["inconclusive"]
    return counts
