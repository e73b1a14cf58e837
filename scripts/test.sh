#!/usr/bin/env bash
# One command: set up .venv, then lint (style, then the import layers) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # pyproject.toml [tool.importlinter]: flows -> tasks -> trainer
.venv/bin/python -m pytest -q --durations=25 "$@"
