#!/usr/bin/env bash
# One command: set up .venv, then lint (style, then the import layers) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # pyproject.toml [tool.importlinter]: flows -> tasks -> trainer
# two workers, a test file each at a time (its module fixtures stay in one process): most tests
# wait on subprocesses and servers, so the two cores overlap them (CI has two)
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 "$@"
