#!/usr/bin/env bash
# Packaging check (CI runs it after the tests): build the wheel, install it into a fresh virtual
# environment in a temporary folder away from the checkout, and describe every shipped preset with
# `attnkit info --config NAME` from there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "wheel: building"
.venv/bin/python -m pip wheel --no-deps -q -w "$work/dist" . 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls "$work"/dist/attnkit-*.whl)
python3 -m venv "$work/venv"
echo "wheel: installing $(basename "$wheel") into a fresh environment"
"$work/venv/bin/python" -m pip install -q -c .venv/torch-constraint.txt "$wheel[data]" 2>&1 \
  | grep -v "^WARNING: Location" || true
expected=$(ls attnkit/configs/*.toml | wc -l)
cd "$work"
presets=$("$work/venv/bin/python" -c "from attnkit.runs import presets; print(' '.join(sorted(presets())))")
found=$(echo "$presets" | wc -w)
if [ "$found" != "$expected" ]; then
  echo "wheel: the installed package has $found presets, the checkout $expected" >&2
  exit 1
fi
for preset in $presets; do
  "$work/venv/bin/attnkit" info --config "$preset" > "$work/info.txt"
  if ! grep -q " parameters (" "$work/info.txt"; then cat "$work/info.txt" >&2; exit 1; fi
  echo "wheel: $preset: $(head -1 "$work/info.txt")"
done
