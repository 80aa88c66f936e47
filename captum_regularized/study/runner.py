"""Run the reproduction study: train once per (model, seed), run every section, write files.

``run_study`` writes ``results.json`` (every number per seed, means, spreads and
verdicts), ``report.md`` (the same as tables, with the figures) and one PNG per figure.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import captum
import torch

from captum_regularized import __version__
from captum_regularized.study.guided_section import run_guided_section
from captum_regularized.study.model_zoo import RECIPES, ModelZoo
from captum_regularized.study.norm_adversarial_section import run_norm_adversarial_section
from captum_regularized.study.report import write_report
from captum_regularized.study.rsi_section import run_rsi_section
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.settings import FULL, TINY, StudySettings
from captum_regularized.study.signed_maps_section import run_signed_maps_section
from captum_regularized.study.study_data import StudyData
from captum_regularized.study.verdicts import RULE_TEXT

__all__ = ["SECTIONS", "run_study", "tiny_context"]

SECTIONS: dict[str, Callable[[StudyContext], Section]] = {
    "signed_maps": run_signed_maps_section,
    "rsi_grad_cam": run_rsi_section,
    "guided_gradients": run_guided_section,
    "norm_adversarial": run_norm_adversarial_section,
}
"""Section key (in ``results.json``) to the function that runs it, in report order."""


def _stage_logger(started: float, enabled: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if enabled:
            print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)

    return log


def tiny_context(out: Path | None = None) -> StudyContext:
    """A silent :data:`~captum_regularized.study.settings.TINY` context (for examples/tests).

    Examples
    --------
    >>> tiny_context().settings.train_samples
    96
    """
    out = Path(tempfile.mkdtemp()) if out is None else out
    data = StudyData(TINY)
    zoo = ModelZoo(TINY, data, log=lambda line: None, progress=False)
    return StudyContext(TINY, data, zoo, out, seeds=[0], log=lambda line: None)


def _model_summaries(zoo: ModelZoo) -> list[dict[str, Any]]:
    by_recipe: dict[str, list[Any]] = {}
    for trained in zoo.trained():
        by_recipe.setdefault(trained.recipe, []).append(trained)
    summaries = []
    for recipe, models in by_recipe.items():
        count = len(models)
        summaries.append({
            "recipe": recipe,
            "label": RECIPES[recipe].label,
            "seeds": count,
            "accuracy": sum(m.accuracy for m in models) / count,
            "mean_max_softmax": sum(m.mean_max_softmax for m in models) / count,
            "train_seconds": sum(m.train_seconds for m in models) / count,
            "per_seed": [
                {"seed": m.seed, "accuracy": m.accuracy, "mean_max_softmax": m.mean_max_softmax,
                 "train_seconds": m.train_seconds}
                for m in models
            ],
        })
    return summaries


def environment(command: str | None = None) -> dict[str, Any]:
    """What a reader needs to know about where a run happened (recorded in the results).

    Examples
    --------
    >>> sorted(environment("reproduce --quick"))  # doctest: +NORMALIZE_WHITESPACE
    ['captum', 'captum_regularized', 'command', 'cpu_count', 'date_utc', 'machine',
     'python', 'torch', 'torch_threads']
    """
    return {
        "command": command,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "captum_regularized": __version__,
        "torch": torch.__version__,
        "captum": captum.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def run_study(
    out: Path,
    *,
    settings: StudySettings = FULL,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    data: Path | None = None,
    progress: bool = True,
    stages: bool = True,
    sections: Sequence[str] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the study into the existing folder ``out`` and return what ``results.json`` holds.

    Parameters
    ----------
    out : Path
        Writable folder for ``results.json``, ``report.md`` and the figures.
    settings : StudySettings
        Sizes (:data:`FULL`, :data:`QUICK`, :data:`TINY` or your own).
    quick : bool
        Recorded in the results (the report then warns that verdicts are not evidence).
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        First seed; the run uses ``seed, seed + 1, ..., seed + settings.seeds - 1``.
    data : Path, optional
        An image folder (one sub-folder per class) instead of the synthetic shapes; mask
        metrics are skipped.
    progress : bool
        Show the training progress bars.
    stages : bool
        Print one line per stage (models trained, sections scored).
    sections : sequence of str, optional
        Keys of :data:`SECTIONS` to run (default: all).
    command : str, optional
        The command line that started the run, recorded with the environment.

    Returns
    -------
    dict
        ``settings``, ``environment``, ``seeds``, ``device``, ``data``, ``rule``, ``models``,
        ``sections`` (each with tables, claims and verdicts), ``summary``,
        ``complete`` (false in the files written after an earlier section),
        ``total_seconds``.

    Examples
    --------
    >>> folder = Path(tempfile.mkdtemp())
    >>> results = run_study(folder, settings=TINY, progress=False, stages=False,
    ...                     sections=["signed_maps"])
    >>> sorted(results["sections"]), (folder / "report.md").exists()
    (['signed_maps'], True)
    """
    started = time.perf_counter()
    log = _stage_logger(started, stages)
    keys = list(SECTIONS) if sections is None else list(sections)
    unknown = [key for key in keys if key not in SECTIONS]
    if unknown:
        raise ValueError(f"sections must be among {list(SECTIONS)}, got {unknown}")
    study_data = StudyData(settings, data)
    zoo = ModelZoo(settings, study_data, device=device, log=log, progress=progress)
    seeds = [seed + k for k in range(settings.seeds)]
    context = StudyContext(settings, study_data, zoo, out, seeds, device=device, log=log)
    log(f"reproduction study: {len(keys)} sections, seeds {seeds}, data {study_data.source}")
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "environment": environment(command),
        "quick": quick,
        "seeds": seeds,
        "device": device,
        "data": study_data.source,
        "rule": RULE_TEXT,
        "sections": {},
    }
    for key in keys:
        section_started = time.perf_counter()
        log(f"section {key}: start")
        section = SECTIONS[key](context)
        results["sections"][key] = section.as_dict()
        held = sum(v.held for v in section.verdicts())
        log(f"section {key}: {held} of {len(section.verdicts())} claims held "
            f"({time.perf_counter() - section_started:.0f} s)")
        # Written after every section, so a long run that is stopped keeps what it found.
        _write(out, results, zoo, started, complete=key == keys[-1])
    log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return results


def _write(out: Path, results: dict[str, Any], zoo: ModelZoo, started: float,
           complete: bool) -> None:
    claims = [c for s in results["sections"].values() for c in s["claims"]]
    results["summary"] = {"held": sum(c["held"] for c in claims), "claims": len(claims)}
    results["models"] = _model_summaries(zoo)
    results["complete"] = complete
    results["total_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results)
