"""The build configuration: ``setup.cfg`` holds setuptools' package discovery and package
data, ``pyproject.toml`` the rest, and no setting is stated in both."""

from __future__ import annotations

import configparser
import pkgutil
import sys
from pathlib import Path
from typing import Any

import pytest

import captum_regularized

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(captum_regularized.__file__).parent


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(ROOT / "setup.cfg"), "setup.cfg is missing at the top level"
    return parser


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dashed(key: str) -> str:
    return key.replace("_", "-")


# setup.cfg keys whose pyproject.toml home is not tool.setuptools.<key>
_OPTIONS_IN_PROJECT = {
    "install_requires": ("project", "dependencies"),
    "python_requires": ("project", "requires-python"),
}
# setup.cfg sections and their pyproject.toml tables
_SECTIONS = {
    "metadata": ("project",),
    "options": ("tool", "setuptools"),
    "options.packages.find": ("tool", "setuptools", "packages", "find"),
    "options.package_data": ("tool", "setuptools", "package-data"),
    "options.exclude_package_data": ("tool", "setuptools", "exclude-package-data"),
    "options.data_files": ("tool", "setuptools", "data-files"),
    "options.extras_require": ("project", "optional-dependencies"),
    "options.entry_points": ("project", "entry-points"),
    "tool:pytest": ("tool", "pytest", "ini_options"),
}


def pyproject_address(section: str, key: str) -> tuple[str, ...]:
    """Where pyproject.toml would state the setup.cfg setting ``[section] key``.

    >>> pyproject_address("options.package_data", "captum_regularized")
    ('tool', 'setuptools', 'package-data', 'captum_regularized')
    >>> pyproject_address("mypy", "python_version")
    ('tool', 'mypy', 'python_version')
    """
    if section == "options" and key in _OPTIONS_IN_PROJECT:
        return _OPTIONS_IN_PROJECT[key]
    if section == "options.entry_points" and key == "console_scripts":
        return ("project", "scripts")
    if section in _SECTIONS:
        return (*_SECTIONS[section], _dashed(key) if section in ("metadata", "options") else key)
    if section.startswith("options."):  # another of setuptools' option tables
        return ("tool", "setuptools", *map(_dashed, section.split(".")[1:]), key)
    return ("tool", *section.split(":"), key)  # [mypy] -> tool.mypy, [coverage:run] -> ...


def _stated(table: dict[str, Any], address: tuple[str, ...]) -> bool:
    for part in address:
        if not isinstance(table, dict) or part not in table:
            return False
        table = table[part]
    return True


def test_setup_cfg_holds_package_discovery_and_package_data():
    cfg = _setup_cfg()
    assert cfg.get("options", "packages").strip() == "find:"
    assert cfg.has_section("options.packages.find")
    assert cfg.get("options.package_data", "captum_regularized").split() == ["py.typed"]
    assert (PACKAGE / "py.typed").is_file()


def test_no_setting_is_in_both_files():
    pyproject, cfg = _pyproject(), _setup_cfg()
    both = [
        f"[{section}] {key}"
        for section in cfg.sections()
        for key in cfg[section]
        if _stated(pyproject, pyproject_address(section, key))
    ]
    assert not both, f"stated in setup.cfg and pyproject.toml: {both}"
    setuptools_table = pyproject.get("tool", {}).get("setuptools", {})
    assert "packages" not in setuptools_table and "package-data" not in setuptools_table


def test_setuptools_finds_the_installed_packages_and_py_typed(monkeypatch):
    """setuptools reads both files as a build would (setup.cfg, then pyproject.toml)."""
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    dist = Distribution()
    dist.parse_config_files()
    installed = {captum_regularized.__name__} | {
        module.name
        for module in pkgutil.walk_packages(captum_regularized.__path__, "captum_regularized.")
        if module.ispkg
    }
    in_tree = {
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
    }
    assert set(dist.packages) == installed == in_tree
    assert dist.package_data == {"captum_regularized": ["py.typed"]}
    assert dist.metadata.name == "captum-regularized"  # pyproject.toml's [project] still applies
    assert dist.entry_points == {
        "console_scripts": ["captum-regularized = captum_regularized.cli:main"]
    }
