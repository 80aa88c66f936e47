"""``report.md``: every section's claim, measured numbers (mean ± std over seeds) and the
verdicts of every data set side by side, with a sentence on each claim that did not hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captum_regularized.study.explanations import why_not_held
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


def _data_sets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-data-set records; a single-data-set record (``sections`` at the top, as
    older files hold) becomes one data set named after its ``data``."""
    if "data_sets" in results:
        return results["data_sets"]
    return {
        "data": {
            "label": "measured",
            "source": results.get("data", ""),
            "sections": results["sections"],
            "models": results.get("models", []),
            "summary": results.get("summary", {}),
        }
    }


def _table_lines(name: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    metrics: list[str] = []
    for columns in rows.values():
        metrics += [metric for metric in columns if metric not in metrics]
    lines = [f"**{name}**", "", f"| | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for row, columns in rows.items():
        cells = [format_value(columns[m]) if m in columns else "–" for m in metrics]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    return [*lines, ""]


def _verdict_cell(claim: dict[str, Any] | None) -> str:
    if claim is None:
        return "–"
    if not claim.get("measured", True):
        return f"not measured: {claim.get('missing') or 'no numbers'}"
    verdict = "**held**" if claim["held"] else "not held"
    return (
        f"{claim['baseline_mean']:.3f} → {claim['method_mean']:.3f}; "
        f"{claim['improvement_mean']:+.3f} ± {claim['improvement_spread']:.3f}; {verdict}"
    )


def _claim_lines(key: str, per_data: dict[str, dict[str, Any]],
                 labels: dict[str, str]) -> list[str]:
    """One row per claim, one column per data set; then why each not-held claim failed."""
    texts: list[str] = []
    for section in per_data.values():
        texts += [c["text"] for c in section["claims"] if c["text"] not in texts]
    found = {
        data: {c["text"]: c for c in section["claims"]} for data, section in per_data.items()
    }
    header = " | ".join(f"{labels[data]}: baseline → method; improvement; verdict"
                        for data in per_data)
    lines = [f"| claim | metric | paper | {header} |",
             "|---|---|---|" + "---|" * len(per_data)]
    reasons: list[str] = []
    for text in texts:
        claims = {data: found[data].get(text) for data in per_data}
        first = next(c for c in claims.values() if c is not None)
        margin = f" (margin {first['margin']:g})" if first["margin"] else ""
        cells = " | ".join(_verdict_cell(c) for c in claims.values())
        lines.append(
            f"| {text} | {first['metric']} ({first['better']} is better){margin} | "
            f"{first.get('paper') or '–'} | {cells} |"
        )
        for data, claim in claims.items():
            if claim is not None and claim.get("measured", True) and not claim["held"]:
                reasons.append(f"- *{text}* ({labels[data]}): {why_not_held(key, claim)}")
    lines.append("")
    if reasons:
        lines += ["Why the claims that did not hold did not:", "", *reasons, ""]
    return lines


def _section_lines(key: str, per_data: dict[str, dict[str, Any]],
                   labels: dict[str, str]) -> list[str]:
    section = next(iter(per_data.values()))
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
    number = section["title"].split(".")[0]  # keeps the sub-headings unique in the docs
    for data, record in per_data.items():
        lines += [f"### {labels[data]}, section {number}", ""]
        for name, rows in record["tables"].items():
            lines += _table_lines(name, rows)
        lines += [f"Note: {note}" for note in record["notes"]]
        lines += [""] if record["notes"] else []
        for figure in record["figures"]:
            lines += [f"![{labels[data]}: {figure['caption']}]({figure['file']})", ""]
    held = ", ".join(
        f"{labels[data]} {sum(c['held'] for c in record['claims'])} of {len(record['claims'])}"
        for data, record in per_data.items()
    )
    lines += [f"### Verdicts of section {number} ({held} claims held)", ""]
    return lines + _claim_lines(key, per_data, labels)


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


def _summary_lines(data_sets: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """Per section and data set: how many claims held; then which held, per data set."""
    lines = ["## Summary", "",
             f"| section | {' | '.join(labels[d] for d in data_sets)} |",
             "|---|" + "---|" * len(data_sets)]
    keys: list[str] = []
    for record in data_sets.values():
        keys += [k for k in record["sections"] if k not in keys]
    for key in keys:
        title = next(r["sections"][key]["title"] for r in data_sets.values()
                     if key in r["sections"])
        cells = []
        for record in data_sets.values():
            claims = record["sections"].get(key, {}).get("claims")
            cells.append("–" if claims is None else
                         f"{sum(c['held'] for c in claims)} of {len(claims)}")
        lines.append(f"| {title} | {' | '.join(cells)} |")
    lines.append("")
    for data, record in data_sets.items():
        claims = [c for s in record["sections"].values() for c in s["claims"]]
        held = [c["text"] for c in claims if c["held"]]
        unmeasured = [c["text"] for c in claims if not c.get("measured", True)]
        lines.append(f"**{labels[data]}: {len(held)} of {len(claims)} held.** "
                     + ("Held: " + "; ".join(held) + "." if held else "None held."))
        if unmeasured:
            lines.append(f"Not measured: {'; '.join(unmeasured)}.")
        lines.append("")
    return lines


def _model_lines(data_sets: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = ["Trained models (held-out accuracy, mean over seeds):", "",
             "| data set | model | seeds | accuracy | mean max-softmax | training seconds |",
             "|---|---|---|---|---|---|"]
    for data, record in data_sets.items():
        for model in record.get("models", []):
            lines.append(
                f"| {labels[data]} | {model['label']} | {model['seeds']} | "
                f"{model['accuracy']:.3f} | {model['mean_max_softmax']:.3f} | "
                f"{model['train_seconds']:.1f} |"
            )
    return [*lines, ""]


def _concentration_lines(data_sets: dict[str, dict[str, Any]]) -> list[str]:
    rows = data_sets.get("synthetic", {}).get("gradient_concentration")
    if not rows:
        return []
    lines = [
        "**How concentrated the plain gradient is on the object (SyntheticShapes).** "
        "The synthetic track uses the harder configuration (four distractors in reds, "
        "oranges and pinks near the target's red, smaller objects, background clutter); "
        "a resnet18 trained the same "
        "way on each configuration, energy in mask of |plain gradient| of the label on the "
        "held-out examples (share of the map inside the object; the mask's share of the "
        "image for scale):",
        "",
        "| configuration | resnet18 accuracy | energy in mask | mask area |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {format_value(row['accuracy'])} | "
                     f"{format_value(row['energy_in_mask'])} | {format_value(row['mask_area'])} |")
    return [*lines, ""]


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Write ``out / "report.md"`` from the ``results.json`` record and return its path.

    Examples
    --------
    >>> import tempfile
    >>> results = {"device": "cpu", "seeds": [0], "quick": True, "total_seconds": 1.0,
    ...            "rule": "mean(d) - std(d) > 0", "data_sets": {}}
    >>> path = write_report(Path(tempfile.mkdtemp()), results)
    >>> path.read_text().splitlines()[0]
    '# captum-regularized: reproduction study'
    """
    seeds = results["seeds"]
    data_sets = _data_sets(results)
    labels = {key: record["label"] for key, record in data_sets.items()}
    held = "; ".join(
        f"{labels[key]} **{record['summary']['held']} of {record['summary']['claims']}**"
        for key, record in data_sets.items() if record.get("summary")
    )
    lines = [
        "# captum-regularized: reproduction study",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Device: {results['device']}. Total time: "
        f"{results['total_seconds']:.0f} s. Claims held: {held or 'none measured'}.",
        "",
        *[f"- {labels[key]}: {record['source']}" for key, record in data_sets.items()],
        "",
    ]
    for note in results.get("notes", []):
        lines += [f"> {note}", ""]
    lines += [f"**Verdict rule.** {results['rule']}", ""]
    if not results.get("complete", True):
        lines += ["> **Partial results**: the run has not finished every section yet.", ""]
    if len(seeds) < 2:
        lines += [
            "> With a single seed there is no spread: a verdict only says which mean was "
            "better." + (" This is the `--quick` run (tiny models, few examples): its "
                         "verdicts are not evidence either way." if results["quick"] else ""),
            "",
        ]
    lines += _model_lines(data_sets, labels) + _concentration_lines(data_sets)
    keys: list[str] = []
    for record in data_sets.values():
        keys += [k for k in record["sections"] if k not in keys]
    for key in keys:
        per_data = {data: record["sections"][key] for data, record in data_sets.items()
                    if key in record["sections"]}
        lines += _section_lines(key, per_data, labels)
    lines += _summary_lines(data_sets, labels) + _run_lines(results)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
