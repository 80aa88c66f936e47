"""Importing the package: no import cycles and no side effects (matplotlib's backend)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import captum_regularized

PACKAGE = Path(captum_regularized.__file__).parent
ROOT = PACKAGE.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
APPLICATIONS = [
    f"{ROOT}.__main__", f"{ROOT}.cli", f"{ROOT}.cli_support", f"{ROOT}.demo",
    f"{ROOT}.study", f"{ROOT}.study.command", f"{ROOT}.study.figures",
]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _imported(name: str, path: Path) -> set[str]:
    """Package modules that importing ``name`` runs, from every import statement in it
    (also those inside functions): the target and its parent packages, except the
    parents of ``name`` itself (they are already being imported)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    own_parents = set(_ancestors(name))
    runs = set()
    for target in targets:
        if target in MODULES:
            runs.update(a for a in _ancestors(target) if a not in own_parents)
            runs.add(target)
    runs.discard(name)
    return runs


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back():
    graph = {name: _imported(name, path) for name, path in MODULES.items()}
    # the command line's parts: the entry point uses the study's command, never back
    assert f"{ROOT}.study.command" in graph[f"{ROOT}.cli"]
    assert f"{ROOT}.cli" not in graph[f"{ROOT}.study.command"]
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


_IMPORT_EVERY_MODULE = """
import importlib, json, sys
import matplotlib
matplotlib.use("svg")  # any backend the package must leave alone
names, fresh = json.loads(sys.argv[1]), json.loads(sys.argv[2])
problems = []

def check(name):
    try:
        importlib.import_module(name)
    except Exception as error:
        problems.append(f"import {name}: {type(error).__name__}: {error}")
    if matplotlib.get_backend() != "svg":
        problems.append(f"import {name} switched matplotlib to {matplotlib.get_backend()}")
        matplotlib.use("svg")

for name in fresh:  # each imported first, with none of the package loaded yet
    for loaded in [m for m in sys.modules if m.split(".")[0] == names[0]]:
        del sys.modules[loaded]
    check(name)
for name in names:
    check(name)
print(json.dumps(problems))
"""


def test_importing_every_module_leaves_matplotlibs_backend_alone():
    names = [ROOT, *sorted(name for name in MODULES if name != ROOT)]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_MODULE, json.dumps(names),
         json.dumps(APPLICATIONS)],
        capture_output=True, text=True, timeout=600, cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert problems == [], "\n".join(problems)


def _package(parts: tuple[str, ...]) -> str:
    """The subpackage a module (its dotted name's parts after the root) belongs to."""
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGES) else ""


PACKAGES = {name.split(".")[1] for name, path in MODULES.items() if path.name == "__init__.py"
            and name != ROOT}


def _private_imports_across_packages(name: str, path: Path) -> list[str]:
    """``from X import y`` statements of ``name`` that reach into another package's
    private modules (``metrics._perturbation``) or names (``_explain``); the shared
    ``_internal`` package is there to be imported, its private names are not."""
    mine = _package(tuple(name.split(".")))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = tuple(node.module.split("."))
        if parts[0] != ROOT or _package(parts) == mine:
            continue
        private = [p for p in parts[1:] if p.startswith("_") and p != "_internal"]
        private += [
            a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
        ]
        if private:
            found.append(f"{name}:{node.lineno} imports {', '.join(private)} from {node.module}")
    return found


def test_the_private_import_finder_finds_a_planted_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        f"from {ROOT}.metrics.dataset_evaluation import MetricBatch, _hidden\n"
        f"from {ROOT}.metrics._perturbation import prepare_batch\n"
        f"from {ROOT}._internal.checks import check_finite\n"
    )
    found = _private_imports_across_packages(f"{ROOT}.integrations.planted", planted)
    assert [line.split(" imports ")[1] for line in found] == [
        f"_hidden from {ROOT}.metrics.dataset_evaluation",
        f"_perturbation from {ROOT}.metrics._perturbation",
    ]
    assert _private_imports_across_packages(f"{ROOT}.metrics.planted", planted) == []


def test_no_package_imports_another_packages_private_modules_or_names():
    found = [
        line for name, path in MODULES.items()
        for line in _private_imports_across_packages(name, path)
    ]
    assert found == [], "\n".join(found)
