"""``report.md``: every section's claim, measured numbers (mean ± std over seeds), verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captum_regularized.study.settings import DEPARTURES

__all__ = ["format_value", "write_report"]


def format_value(summary: dict[str, Any]) -> str:
    """``mean ± std`` with three decimals (just the mean for one seed).

    Examples
    --------
    >>> format_value({"mean": 0.1234, "std": 0.01, "per_seed": [0.11, 0.13]})
    '0.123 ± 0.010'
    >>> format_value({"mean": 0.5, "std": 0.0, "per_seed": [0.5]})
    '0.500'
    """
    if len(summary["per_seed"]) < 2:
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _table_lines(name: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    metrics: list[str] = []
    for columns in rows.values():
        metrics += [metric for metric in columns if metric not in metrics]
    lines = [f"**{name}**", "", f"| | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for row, columns in rows.items():
        cells = [format_value(columns[m]) if m in columns else "–" for m in metrics]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    return [*lines, ""]


def _claim_lines(claims: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| claim | metric | baseline | method | improvement (mean ± std) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        margin = f" (margin {c['margin']:g})" if c["margin"] else ""
        if not c.get("measured", True):
            lines.append(
                f"| {c['text']} | {c['metric']} ({c['better']} is better){margin} | "
                f"{c['baseline']}: – | {c['method']}: – | – | "
                f"not measured: {c.get('missing') or 'no numbers'} |"
            )
            continue
        verdict = "**held**" if c["held"] else "not held"
        lines.append(
            f"| {c['text']} | {c['metric']} ({c['better']} is better){margin} | "
            f"{c['baseline']}: {c['baseline_mean']:.3f} | {c['method']}: {c['method_mean']:.3f} | "
            f"{c['improvement_mean']:+.3f} ± {c['improvement_spread']:.3f} | {verdict} |"
        )
    return [*lines, ""]


def _section_lines(section: dict[str, Any]) -> list[str]:
    held = sum(c["held"] for c in section["claims"])
    lines = [
        f"## {section['title']}",
        "",
        f"*Paper:* {section['paper']}",
        "",
        f"**The paper's claim.** {section['paper_claim']}",
        "",
        f"**Our protocol.** {section['protocol']}",
        "",
        "Metrics: " + "; ".join(f"`{k}`: {v}" for k, v in section["metrics"].items()) + ".",
        "",
    ]
    for name, rows in section["tables"].items():
        lines += _table_lines(name, rows)
    lines += [f"**Verdicts: {held} of {len(section['claims'])} claims held.**", ""]
    lines += _claim_lines(section["claims"])
    lines += [f"Note: {note}" for note in section["notes"]] + ([""] if section["notes"] else [])
    for figure in section["figures"]:
        lines += [f"![{figure['caption']}]({figure['file']})", ""]
    return lines


def _run_lines(results: dict[str, Any]) -> list[str]:
    """Where and how the run happened, and every setting it used."""
    env = results.get("environment")
    lines = ["## The run", ""]
    if env:
        lines += [
            f"Command: `{env['command'] or 'run_study(...)'}` on {env['date_utc']} UTC; "
            f"captum-regularized {env['captum_regularized']}, torch {env['torch']}, captum "
            f"{env['captum']}, Python {env['python']}; {env['machine']} with "
            f"{env['cpu_count']} CPUs, {env['torch_threads']} torch threads.",
            "",
        ]
    settings = results.get("settings", {})
    if settings:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| `{name}` | {value:.4g} |" if isinstance(value, float)
                  else f"| `{name}` | {value} |" for name, value in settings.items()]
        lines.append("")
    return [*lines, f"**Departures from the papers.** {DEPARTURES}", ""]


def _summary_lines(results: dict[str, Any]) -> list[str]:
    """Per section: how many claims held, and which (or which not, when most held)."""
    lines = ["## Summary", "", "| section | claims held | which |", "|---|---|---|"]
    for section in results["sections"].values():
        claims = section["claims"]
        held = [c["text"] for c in claims if c["held"]]
        unmeasured = [c["text"] for c in claims if not c.get("measured", True)]
        failed = [c["text"] for c in claims if not c["held"] and c["text"] not in unmeasured]
        if not failed and not unmeasured:
            which = "all"
        elif len(held) > len(failed):
            which = "all but: " + "; ".join(failed)
        else:
            which = ("held: " + "; ".join(held)) if held else "none"
        if unmeasured:
            which += "; not measured: " + "; ".join(unmeasured)
        lines.append(f"| {section['title']} | {len(held)} of {len(claims)} | {which} |")
    return [*lines, ""]


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Write ``out / "report.md"`` from the ``results.json`` record and return its path.

    Examples
    --------
    >>> import tempfile
    >>> results = {"data": "synthetic", "device": "cpu", "seeds": [0], "quick": True,
    ...            "total_seconds": 1.0, "rule": "mean(d) - std(d) > 0", "models": [],
    ...            "sections": {}, "summary": {"held": 0, "claims": 0}}
    >>> path = write_report(Path(tempfile.mkdtemp()), results)
    >>> path.read_text().splitlines()[0]
    '# captum-regularized: reproduction study'
    """
    seeds = results["seeds"]
    lines = [
        "# captum-regularized: reproduction study",
        "",
        f"Data: {results['data']}. Seeds: {', '.join(map(str, seeds))}. Device: "
        f"{results['device']}. Total time: {results['total_seconds']:.0f} s. "
        f"Claims held: **{results['summary']['held']} of {results['summary']['claims']}**.",
        "",
        f"**Verdict rule.** {results['rule']}",
        "",
    ]
    if not results.get("complete", True):
        lines += ["> **Partial results**: the run has not finished every section yet.", ""]
    if len(seeds) < 2:
        lines += [
            "> With a single seed there is no spread: a verdict only says which mean was "
            "better." + (" This is the `--quick` run (tiny models, few examples): its "
                         "verdicts are not evidence either way." if results["quick"] else ""),
            "",
        ]
    lines += ["Trained models (held-out accuracy, mean over seeds):", "",
              "| model | seeds | accuracy | mean max-softmax | training seconds |",
              "|---|---|---|---|---|"]
    for model in results["models"]:
        lines.append(
            f"| {model['label']} | {model['seeds']} | {model['accuracy']:.3f} | "
            f"{model['mean_max_softmax']:.3f} | {model['train_seconds']:.1f} |"
        )
    lines.append("")
    for section in results["sections"].values():
        lines += _section_lines(section)
    lines += _summary_lines(results) + _run_lines(results)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
