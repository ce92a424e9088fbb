#!/usr/bin/env bash
# One command on a fresh machine: set up with the dev extras and run the default (CPU, fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
python -m pytest -q "$@"
