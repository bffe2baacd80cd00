#!/usr/bin/env bash
# Set up, lint, then run the fast test suite (the slow end-to-end runs: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -x -q -n 2 "$@"
