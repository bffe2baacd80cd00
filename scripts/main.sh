#!/usr/bin/env bash
# The main job: set up, then train a character-level Transformer LM on the King James Bible for about
# five minutes and print held-out bits per character and a generated passage.
# Extra arguments go to `attnkit train` (e.g. --set train.minutes=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/attnkit train --config kjv_char_lm --run-dir runs/kjv_char_lm --overwrite "$@"
