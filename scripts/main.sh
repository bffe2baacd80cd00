#!/usr/bin/env bash
# The main job: set up, then train a character-level Transformer LM on the King James Bible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/train_kjv_lm.py "$@"
