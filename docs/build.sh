#!/usr/bin/env bash
# Build the HTML docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
MPLBACKEND=Agg sphinx-build -W --keep-going -b html docs docs/_build/html
