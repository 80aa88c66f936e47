"""The reading limits of the method folders (see docs/design.rst): every method file in
``attr/`` and ``regularizers/`` fits in 450 lines, and no function in ``attr/``,
``regularizers/`` or ``_internal/`` runs over 60 lines, its docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "captum_regularized"
METHOD_FOLDERS = ("attr", "regularizers")
FUNCTION_FOLDERS = ("attr", "regularizers", "_internal")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def _files(folders: tuple[str, ...]) -> list[Path]:
    return sorted(path for folder in folders for path in (PACKAGE / folder).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("path", _files(METHOD_FOLDERS), ids=lambda p: p.name)
def test_method_files_fit_in_450_lines(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"


@pytest.mark.parametrize("path", _files(FUNCTION_FOLDERS), ids=lambda p: p.name)
def test_no_function_runs_over_60_lines(path: Path):
    assert _long_functions(path) == []


def test_the_checks_see_the_folders_and_a_long_function(tmp_path: Path):
    assert len(_files(FUNCTION_FOLDERS)) > 20  # the folders are where the test looks
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = tmp_path / "long.py"
    source.write_text(f"def long():\n{body}\n", encoding="utf-8")
    assert _long_functions(source) == [f"long ({MAX_FUNCTION_LINES + 1} lines)"]
