#!/usr/bin/env bash
# Build the HTML docs with warnings as errors; works from any directory.
#   docs/build.sh                       -> docs/_build/html/index.html
#   DOCS_INTERSPHINX=1 docs/build.sh    -> also link to Python/PyTorch docs (needs network)
# Tutorials in docs/tutorials/ are executed by sphinx-gallery during the build; an
# unchanged tutorial is not re-run (delete docs/auto_tutorials to force it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MPLBACKEND=Agg
# One thread per process: the tiny CNNs gain little from more, and spinning OpenMP
# threads slow everything down on a shared 2-core machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec sphinx-build -W --keep-going -b html docs docs/_build/html "$@"
