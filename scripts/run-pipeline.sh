#!/usr/bin/env bash
# One command: set up .venv, then run the whole pipeline on the shipped example data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/trainflow run "$@"
