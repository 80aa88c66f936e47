"""Run the reproduction study: train once per (model, seed), run every section, write files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
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
from captum_regularized.datasets.fashion_mnist import fashion_mnist_missing
from captum_regularized.study.guided_section import run_guided_section
from captum_regularized.study.model_zoo import ModelZoo
from captum_regularized.study.norm_adversarial_section import run_norm_adversarial_section
from captum_regularized.study.report import write_report
from captum_regularized.study.rsi_section import run_rsi_section
from captum_regularized.study.section import Section, StudyContext
from captum_regularized.study.settings import DEPARTURES, FULL, TINY, StudySettings
from captum_regularized.study.signed_maps_section import run_signed_maps_section
from captum_regularized.study.study_data import DEFAULT_FASHION_MNIST_ROOT, StudyData
from captum_regularized.study.verdicts import RULE_TEXT, count_verdicts

__all__ = ["SECTIONS", "run_study", "study_sources", "tiny_context"]

SECTIONS: dict[str, Callable[[StudyContext], Section]] = {
    "signed_maps": run_signed_maps_section,
    "rsi_grad_cam": run_rsi_section,
    "guided_gradients": run_guided_section,
    "norm_adversarial": run_norm_adversarial_section,
}
"""Section key to the function that runs it, in report order."""


def _stage_logger(started: float, enabled: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if enabled:
            print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)

    return log


def tiny_context(out: Path | None = None) -> StudyContext:
    """A silent :data:`~captum_regularized.study.settings.TINY` context (for examples, tests).

    Examples
    --------
    >>> tiny_context().settings.train_samples
    96
    """
    out = Path(tempfile.mkdtemp()) if out is None else out
    data = StudyData(TINY)
    zoo = ModelZoo(TINY, data, log=lambda line: None, progress=False)
    return StudyContext(TINY, data, zoo, out, seeds=[0], log=lambda line: None)


def _model_records(zoo: ModelZoo) -> list[dict[str, Any]]:
    """One ``results.json`` entry per trained model and seed."""
    return [
        {
            "name": trained.recipe, "label": trained.label, "data": zoo.data.key,
            "seed": trained.seed, "accuracy": trained.accuracy, "floor": trained.floor,
            "scored": trained.scored, "mean_max_softmax": trained.mean_max_softmax,
            "map_size": list(trained.map_size) if trained.map_size else None,
            "train_seconds": trained.train_seconds, "notes": trained.notes,
        }
        for trained in zoo.trained()
    ]


def _summary(claims: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict counts: overall, per data set, per paper (paper claims) and of the extras."""
    paper_claims = [c for c in claims if not c["extra"]]
    return {
        "overall": count_verdicts(paper_claims),
        "per_data_set": {data: count_verdicts([c for c in paper_claims if c["data"] == data])
                         for data in dict.fromkeys(c["data"] for c in claims)},
        "per_paper": {str(paper): count_verdicts([c for c in paper_claims
                                                  if c["paper"] == paper])
                      for paper in sorted({c["paper"] for c in claims})},
        "extra": count_verdicts(claims, extra=True),
    }


def environment(command: str | None = None) -> dict[str, Any]:
    """Where and with what a run happened (recorded in the results)."""
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


def study_sources(
    data: str | Path | None,
    data_root: Path | None,
    log: Callable[[str], None] = print,
    quick: bool = False,
) -> tuple[list[str | Path], list[str]]:
    """The data sets a run covers, and notes on those of the full study left out.

    ``data=None``: SyntheticShapes, plus Fashion-MNIST when its files are found under
    ``data_root`` (a ``quick`` run only looks under an explicit ``data_root``).

    Examples
    --------
    >>> study_sources(None, Path("/nonexistent"), log=lambda line: None)[0]
    ['synthetic']
    >>> study_sources(None, None, quick=True)
    (['synthetic'], [])
    """
    if data is not None:
        return [data], []
    if quick and data_root is None:
        return ["synthetic"], []
    root = DEFAULT_FASHION_MNIST_ROOT if data_root is None else data_root
    missing = fashion_mnist_missing(root)
    if not missing:
        return ["synthetic", "fashion-mnist"], []
    note = f"{missing}: the study ran on SyntheticShapes only (pass --data-root DIR)"
    log(note)
    return ["synthetic"], [note]


def run_study(
    out: Path,
    *,
    settings: StudySettings = FULL,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    data: str | Path | None = None,
    data_root: Path | None = None,
    progress: bool = True,
    stages: bool = True,
    sections: Sequence[str] | None = None,
    command: str | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Run the study into the existing folder ``out`` and return what ``results.json`` holds.

    Parameters
    ----------
    out : Path
        Writable folder for ``results.json``, ``report.md`` and the figures, moved there
        when the run ends (after Ctrl-C: the finished sections, ``"complete": false``).
    settings : StudySettings
        Sizes (:data:`FULL`, :data:`QUICK`, :data:`TINY` or your own).
    quick : bool
        Recorded (the report then warns that verdicts are not evidence).
    device, seed : str, int
        ``"cpu"`` or ``"cuda"``; the first of ``settings.seeds`` consecutive seeds.
    data, data_root : str or Path, Path, optional
        One data set (``None``: see :func:`study_sources`); the Fashion-MNIST folder.
    progress, stages : bool
        Show the training bars; print one line per stage.
    sections : sequence of str, optional
        Keys of :data:`SECTIONS` to run (default: all).
    command : str, optional
        The command line, recorded with the environment.
    cache : Path or None
        Checkpoints shared between runs (as in :class:`.model_zoo.ModelZoo`).

    Returns
    -------
    dict
        The ``results.json`` record (its fields: :doc:`/design_notes/data_and_study`).

    Examples
    --------
    >>> folder = Path(tempfile.mkdtemp())
    >>> results = run_study(folder, settings=TINY, progress=False, stages=False,
    ...                     data="synthetic", sections=["signed_maps"])
    >>> list(results["data_sets"]), sorted(results["sections"]["synthetic"])
    (['synthetic'], ['signed_maps'])
    >>> len(results["claims"]), results["summary"]["overall"]["measured"]
    (8, 8)
    >>> (folder / "report.md").exists()
    True
    """
    started = time.perf_counter()
    log = _stage_logger(started, stages)
    keys = list(SECTIONS) if sections is None else list(sections)
    unknown = [key for key in keys if key not in SECTIONS]
    if unknown:
        raise ValueError(f"sections must be among {list(SECTIONS)}, got {unknown}")
    sources, notes = study_sources(data, data_root, log, quick=quick)
    all_data = [StudyData(settings, source, root=data_root) for source in sources]
    seeds = [seed + k for k in range(settings.seeds)]
    results = _new_results(settings, command, quick, seeds, device, notes)
    log(f"reproduction study: {len(keys)} sections, seeds {seeds}, data sets "
        f"{[d.key for d in all_data]}")
    with _Stage(out) as stage:
        for study_data in all_data:
            zoo = ModelZoo(settings, study_data, device=device, log=log, progress=progress,
                           cache=cache)
            context = StudyContext(settings, study_data, zoo, stage.folder, seeds,
                                   device=device, log=log, figure_prefix=f"{study_data.key}_")
            results["data_sets"][study_data.key] = {"label": study_data.label,
                                                    "source": study_data.source}
            results["sections"].setdefault(study_data.key, {})
            log(f"data set {study_data.label}: {study_data.source}")
            for key in keys:
                _run_section(key, context, results)
                # Written after every section: a long run that is stopped keeps what it found.
                last = study_data is all_data[-1] and key == keys[-1]
                _write(stage, results, started, complete=last)
    log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return results


def _new_results(settings: StudySettings, command: str | None, quick: bool, seeds: list[int],
                 device: str, notes: list[str]) -> dict[str, Any]:
    """The ``results.json`` record before any section has run."""
    return {
        "settings": asdict(settings), "environment": environment(command), "quick": quick,
        "seeds": seeds, "device": device, "rule": RULE_TEXT, "departures": list(DEPARTURES),
        "notes": notes, "data_sets": {}, "papers": {}, "models": [], "claims": [],
        "sections": {},
    }


def _run_section(key: str, context: StudyContext, results: dict[str, Any]) -> None:
    """Run one section on one data set and add its records to ``results``."""
    study_data, log = context.data, context.log
    section_started = time.perf_counter()
    log(f"{study_data.label}, section {key}: start")
    section = SECTIONS[key](context)
    results["sections"][study_data.key][key] = section.as_dict()
    results["papers"][str(section.paper)] = {
        "title": section.title, "citation": section.citation,
        "claim": section.paper_claim, "protocol": section.protocol,
    }
    claims = section.claim_records(study_data.key)
    results["claims"] += claims
    held = sum(c["verdict"] == "held" for c in claims if not c["extra"])
    scored = sum(not c["extra"] for c in claims)
    log(f"{study_data.label}, section {key}: {held} of {scored} paper claims held "
        f"({time.perf_counter() - section_started:.0f} s)")
    others = [m for m in results["models"] if m["data"] != study_data.key]
    results["models"] = others + _model_records(context.zoo)


class _Stage:
    """A hidden folder in ``out`` that a run writes into. On leaving, the files it finished
    move into ``out``: all at the end, those finished before Ctrl-C, none after a failure."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.folder = Path(tempfile.mkdtemp(prefix=".reproduce-partial-", dir=out))
        self.finished: list[Path] = []

    def checkpoint(self) -> None:
        """Take every file written so far as finished."""
        self.finished = sorted(path for path in self.folder.iterdir() if path.is_file())

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self.checkpoint()
            if kind is None or issubclass(kind, KeyboardInterrupt):
                for path in self.finished:  # replacing files of the same name
                    os.replace(path, self.out / path.name)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _write(stage: _Stage, results: dict[str, Any], started: float, complete: bool) -> None:
    """Write ``results.json`` and ``report.md`` whole into the stage, then checkpoint it."""
    results["summary"] = _summary(results["claims"])
    results["complete"] = complete
    results["total_seconds"] = time.perf_counter() - started
    scratch = Path(tempfile.mkdtemp(prefix=".write-", dir=stage.folder))
    (scratch / "results.json").write_text(json.dumps(results, indent=2))
    write_report(scratch, results)
    for name in ("results.json", "report.md"):
        os.replace(scratch / name, stage.folder / name)
    scratch.rmdir()
    stage.checkpoint()
