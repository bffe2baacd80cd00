#!/usr/bin/env bash
# Set up, lint, then run the fast test suite (the slow end-to-end runs: scripts/test.sh -m slow).
# The attention explorer's tests drive Debian's Chromium (installed here when missing, as root) through
# PyPI playwright (the test extra); they skip, saying why, where neither can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing Debian chromium for the attention explorer's browser tests"
  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
    || echo "test: chromium could not be installed; the browser tests will skip" >&2
fi
if [ "$(id -u)" = 0 ]; then  # Debian's package-description translations, fetched once into attnkit's cache
  .venv/bin/python -c "from attnkit.data.descriptions import refresh, cached_files
if not (cached_files('de') and cached_files('fr')): refresh()" \
    || echo "test: the description lists could not be fetched; their real-file tests will skip" >&2
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -x -q -n 2 "$@"
