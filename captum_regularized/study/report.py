"""``report.md`` and the README summary, written from the ``results.json`` record alone.

Missing numbers (``None`` or NaN) show as "–".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from captum_regularized.study.verdicts import VERDICTS, count_verdicts

__all__ = ["format_interval", "format_value", "readme_summary", "write_report"]

DASH = "–"


def _num(value: Any, spec: str = "+.3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return format(value, spec)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_value(summary: dict[str, Any]) -> str:
    """``mean ± std`` with three decimals (just the mean for one seed).

    Examples
    --------
    >>> format_value({"mean": 0.1234, "std": 0.01, "per_seed": [0.11, 0.13]})
    '0.123 ± 0.010'
    >>> format_value({"mean": 0.5, "std": 0.0, "per_seed": [0.5]})
    '0.500'
    """
    mean = _num(summary.get("mean"), ".3f")
    if len(summary.get("per_seed") or []) < 2 or _num(summary.get("std")) == DASH:
        return mean
    return f"{mean} ± {summary['std']:.3f}"


def format_interval(claim: dict[str, Any]) -> str:
    """A claim's effect and interval, signed with three decimals; "–" when not measured.

    Examples
    --------
    >>> format_interval({"effect": 0.0341, "ci_low": 0.012, "ci_high": 0.0511})
    '+0.034 [+0.012, +0.051]'
    >>> format_interval({"effect": None, "ci_low": None, "ci_high": None})
    '–'
    """
    effect = _num(claim.get("effect"))
    low, high = _num(claim.get("ci_low")), _num(claim.get("ci_high"))
    if effect == DASH or DASH in (low, high):
        return effect
    return f"{effect} [{low}, {high}]"


def _claim_cell(claim: dict[str, Any] | None) -> str:
    """``baseline → method; effect [ci] · verdict (+ + −)`` for one data set."""
    if claim is None:
        return DASH
    signs = " ".join("+" if s > 0 else "−" if s < 0 else "0" for s in claim.get("seed_signs") or [])
    verdict = claim.get("verdict") or "not measured"
    verdict = "**held**" if verdict == "held" else verdict
    means = ""
    if claim.get("baseline_mean") is not None and claim.get("method_mean") is not None:
        means = f"{claim['baseline_mean']:.3g} → {claim['method_mean']:.3g}; "
    return f"{means}{format_interval(claim)} · {verdict}" + (f" ({signs})" if signs else "")


CELL_LEGEND = (
    "Each cell: our mean of the baseline → the method over all seeds' examples; the "
    "effect (positive: the claimed direction) with its 95 % interval; the verdict; the "
    "sign of the effect in each seed."
)


def _paper_number(claim: dict[str, Any]) -> str:
    if claim.get("paper_note"):
        return _cell(claim["paper_note"])
    value = _num(claim.get("paper_value"), "g")
    return "qualitative" if value == DASH else value


def _percent(fraction: float | None) -> str:
    return DASH if fraction is None else _num(100 * fraction, ".2f")


def _labels(results: dict[str, Any]) -> dict[str, str]:
    data_sets = results.get("data_sets") or {}
    labels = {key: record.get("label") or key for key, record in data_sets.items()}
    for claim in results.get("claims") or []:
        labels.setdefault(claim["data"], claim["data"])
    return labels


def _claim_table(claims: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """One row per claim (same section and text), one column per data set; then reasons."""
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for claim in claims:
        rows.setdefault((claim.get("section", ""), claim["claim"]), {})[claim["data"]] = claim
    lines = [f"| claim | paper's number | {' | '.join(_cell(labels[d]) for d in labels)} |",
             "|---|---|" + "---|" * len(labels)]
    reasons = []
    for (_, text), found in rows.items():
        first = next(iter(found.values()))
        cells = " | ".join(_claim_cell(found.get(data)) for data in labels)
        lines.append(f"| {_cell(text)} | {_paper_number(first)} | {cells} |")
        for data, claim in found.items():
            if claim.get("verdict") != "held":
                why = claim.get("reason") or claim.get("verdict") or "not measured"
                reasons.append(f"- *{labels[data]}*, {text}: {why}")
    return [*lines, "", *reasons, *([""] if reasons else [])]


def _summary_lines(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    everything, summary = results.get("claims") or [], results.get("summary") or {}
    claims = [c for c in everything if not c.get("extra")]
    overall = summary.get("overall") or count_verdicts(claims)
    extra = summary.get("extra") or count_verdicts(everything, extra=True)
    lines = ["## Summary", "",
             f"**{overall['held']} of {overall['measured']} measured paper claims held** "
             f"({overall['not held']} not held, {overall['inconclusive']} inconclusive; "
             f"{overall['not measured']} not measured).", ""]
    for data, label in labels.items():
        counts = (summary.get("per_data_set") or {}).get(data) or count_verdicts(
            [c for c in claims if c["data"] == data])
        lines.append(f"- {label}: {counts['held']} of {counts['measured']} held.")
    lines += ["", "| paper | data set | held | not held | inconclusive | not measured |",
              "|---|---|---|---|---|---|"]
    for paper in sorted({c["paper"] for c in claims}, key=int):
        for data, label in labels.items():
            subset = [c for c in claims if c["paper"] == paper and c["data"] == data]
            if subset:
                counts = count_verdicts(subset)
                lines.append(f"| {paper} | {label} | "
                             + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
    return [*lines, "",
            f"Extra observations (outside the score): {extra['held']} held, "
            f"{extra['not held']} not held, {extra['inconclusive']} inconclusive, "
            f"{extra['not measured']} not measured.", ""]


def _model_lines(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    lines = ["## Models", "",
             "| model | data set | seed | accuracy (%) | floor (%) | scored | mean max-softmax "
             "| CAM map size | training seconds | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in results.get("models") or []:
        size = model.get("map_size")
        cells = [_cell(model.get("label") or model.get("name", DASH)),
                 _cell(labels.get(model.get("data", ""), model.get("data", DASH))),
                 _num(model.get("seed"), "d"), _percent(model.get("accuracy")),
                 _percent(model.get("floor")),
                 "yes" if model.get("scored") else "no: below the floor",
                 _num(model.get("mean_max_softmax"), ".3f"),
                 f"{size[0]}×{size[1]}" if size else DASH,
                 _num(model.get("train_seconds"), ".1f"), _cell(model.get("notes") or DASH)]
        lines.append(f"| {' | '.join(cells)} |")
    return [*lines, ""]


def _measurement_lines(label: str, paper: str, sections: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {label}: measurements (paper {paper})", ""]
    for section in sections:
        metrics = section.get("metrics") or {}
        if metrics:
            lines += ["Metrics: " + "; ".join(f"`{k}`: {v}" for k, v in metrics.items()) + ".", ""]
        for name, rows in (section.get("tables") or {}).items():
            columns = list(dict.fromkeys(m for row in rows.values() for m in row))
            lines += [f"**{_cell(name)}** (mean ± std over seeds)", "",
                      f"| | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
            for row, values in rows.items():
                cells = [format_value(values[m]) if m in values else DASH for m in columns]
                lines.append(f"| {_cell(row)} | {' | '.join(cells)} |")
            lines.append("")
        lines += [f"Note: {note}" for note in section.get("notes") or []]
        lines += [""] if section.get("notes") else []
        for figure in section.get("figures") or []:
            lines += [f"![{label}: {figure.get('caption', '')}]({figure['file']})", ""]
    return lines


def _paper_lines(results: dict[str, Any], paper: str, labels: dict[str, str]) -> list[str]:
    record = results["papers"][paper]
    lines = [f"## Paper {paper}: {record.get('title', '')}", "",
             f"*{record.get('citation', '')}*", "",
             f"**The paper's claim.** {record.get('claim', '')}", "",
             f"**Our protocol.** {record.get('protocol', '')}", ""]
    claims = [c for c in results.get("claims") or [] if str(c["paper"]) == paper]
    scored = [c for c in claims if not c.get("extra")]
    extra = [c for c in claims if c.get("extra")]
    lines += [f"### Claims (paper {paper})", "", CELL_LEGEND, ""]
    lines += _claim_table(scored, labels) if scored else ["No claim was measured.", ""]
    if extra:
        lines += [f"### Extra observations of paper {paper} (outside the score)", ""]
        lines += _claim_table(extra, labels)
    for data, label in labels.items():
        sections = [s for s in (results.get("sections") or {}).get(data, {}).values()
                    if str(s.get("paper")) == paper]
        if sections:
            lines += _measurement_lines(label, paper, sections)
    return lines


def _run_lines(results: dict[str, Any]) -> list[str]:
    env = results.get("environment") or {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("captum_regularized", "torch", "captum",
                                                    "python") if env.get(k))
    seconds = results.get("total_seconds") or 0.0
    lines = ["## The run", "",
             f"Command: `{env.get('command') or 'run_study(...)'}` on "
             f"{env.get('date_utc') or DASH} UTC; {versions or 'versions not recorded'}; "
             f"{env.get('cpu_count') or DASH} CPU cores, {env.get('torch_threads') or DASH} "
             "torch threads.", "",
             f"Seeds: {', '.join(map(str, results.get('seeds') or [])) or DASH}. "
             f"Device: {results.get('device') or DASH}. Total time: {seconds:.0f} s "
             f"({seconds / 60:.1f} min).", "",
             "| setting | value |", "|---|---|"]
    for name, value in (results.get("settings") or {}).items():
        shown = _num(value, ".4g") if isinstance(value, float) or value is None else value
        lines.append(f"| `{name}` | {_cell(shown)} |")
    return [*lines, ""]


def write_report(folder: Path, results: dict[str, Any]) -> Path:
    """Write ``folder / "report.md"`` from the ``results.json`` record and return its path.

    Examples
    --------
    >>> import tempfile
    >>> results = {"quick": True, "complete": True, "rule": "mean(d) - std(d) > 0",
    ...            "claims": [], "papers": {}, "seeds": [0], "total_seconds": 90.0}
    >>> text = write_report(Path(tempfile.mkdtemp()), results).read_text()
    >>> text.splitlines()[0]
    '# Reproduction study'
    >>> "**0 of 0 measured paper claims held**" in text
    True
    """
    labels = _labels(results)
    lines = ["# Reproduction study", ""]
    if results.get("quick"):
        lines += ["**This is a smoke test (`--quick`, CI-sized models and data): its verdicts "
                  "are not evidence either way.**", ""]
    if not results.get("complete", True):
        lines += ["> The run was stopped before it finished: this report lists only the "
                  "sections that finished.", ""]
    lines += [f"- {labels[k]}: {r.get('source', '')}"
              for k, r in (results.get("data_sets") or {}).items()]
    lines += ["", *_summary_lines(results, labels)]
    lines += ["## The verdict rule", "", results.get("rule") or DASH, ""]
    lines += _model_lines(results, labels)
    for paper in sorted(results.get("papers") or {}, key=int):
        lines += _paper_lines(results, str(paper), labels)
    lines += ["## Departures from the papers", ""]
    lines += [f"- {d}" for d in results.get("departures") or []] or ["No departures recorded."]
    lines += ["", "## Notes", "", *([f"- {n}" for n in results.get("notes") or [] if n]
                                    or ["No notes."])]
    lines += ["", *_run_lines(results)]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def readme_summary(results: dict[str, Any]) -> str:
    """Markdown for the README: the N-of-M sentence and one table of claims per paper.

    Examples
    --------
    >>> results = {"claims": [], "papers": {}, "seeds": [0, 1], "total_seconds": 600.0,
    ...            "environment": {"date_utc": "2025-01-02T03:04", "cpu_count": 2}}
    >>> print(readme_summary(results))  # doctest: +NORMALIZE_WHITESPACE
    In the published run (2025-01-02, 2 seeds; 0 minutes of model training, summed, and 10.0
    minutes of scoring on 2 CPU cores), 0 of 0 measured claims of the four papers held.
    <BLANKLINE>
    Each cell: our mean of the baseline → the method over all seeds' examples; the effect
    (positive: the claimed direction) with its 95 % interval; the verdict; the sign of the
    effect in each seed.
    """
    labels = _labels(results)
    claims = [c for c in results.get("claims") or [] if not c.get("extra")]
    env = results.get("environment") or {}
    overall = (results.get("summary") or {}).get("overall") or count_verdicts(claims)
    per_data = ", ".join(
        f"{label} {counts['held']} of {counts['measured']}"
        for data, label in labels.items()
        if (counts := count_verdicts([c for c in claims if c["data"] == data]))["measured"]
    )
    minutes = (results.get("total_seconds") or 0.0) / 60
    trained = sum(m.get("train_seconds") or 0.0 for m in results.get("models") or []) / 60
    lines = [f"In the published run ({(env.get('date_utc') or DASH)[:10]}, "
             f"{len(results.get('seeds') or [])} seeds; {trained:.0f} minutes of model "
             f"training, summed, and {minutes:.1f} minutes of scoring on "
             f"{env.get('cpu_count') or DASH} CPU cores), {overall['held']} of "
             f"{overall['measured']} measured claims of the four papers held"
             + (f" (per data set: {per_data})." if per_data else ".")]
    if results.get("quick"):
        lines[0] += " This was a smoke test: its verdicts are not evidence."
    lines += ["", CELL_LEGEND]
    for paper in sorted({str(c["paper"]) for c in claims}, key=int):
        title = (results.get("papers") or {}).get(paper, {}).get("title", "")
        table = _claim_table([c for c in claims if str(c["paper"]) == paper],
                             {d: f"{label} ours" for d, label in labels.items()})
        lines += ["", f"**Paper {paper}: {title}**", "", *table[:table.index("")]]
    return "\n".join(lines)
