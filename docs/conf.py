"""Sphinx configuration for captum-regularized (build with ``docs/build.sh``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tutorials run at build time on small CPU machines: headless, one torch thread
# (see build.sh). Both must be set before matplotlib and torch are imported.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import captum_regularized  # noqa: E402

project = "captum-regularized"
author = "captum-regularized developers"
copyright = "2026, captum-regularized developers"
release = version = captum_regularized.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "tutorials/README.txt", "auto_tutorials/*.md", ".DS_Store"]
templates_path: list[str] = []

# -- autodoc / napoleon ------------------------------------------------------
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_inherit_docstrings = False
# quantus is optional: the adapter module never imports it, but mock it anyway so the
# page builds whether or not it is installed.
autodoc_mock_imports = ["quantus"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# "Attributes" sections as :ivar: fields: named-tuple fields are also autodoc members,
# and two descriptions of one attribute would be a duplicate-object warning.
napoleon_use_ivar = True

# Offline builds must not fail on unreachable inventories: intersphinx is opt-in
# (DOCS_INTERSPHINX=1 docs/build.sh).
intersphinx_mapping: dict[str, tuple[str, None]] = {}
if os.environ.get("DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://pytorch.org/docs/stable", None),
    }

# -- MyST (the reproduction report is markdown) --------------------------------
myst_heading_anchors = 3

# -- sphinx-gallery -----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    # a tutorial that raises fails the build instead of showing a traceback
    "abort_on_example_error": True,
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML ---------------------------------------------------------------------
html_theme = "furo"
html_title = f"captum-regularized {release}"
# no _static directory: git does not keep empty folders, and a missing entry would
# be a warning (an error under -W) on a fresh checkout
html_static_path: list[str] = []
