#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU, PyTorch with CUDA, transformers and PEFT installed and no
# network (see scripts/gpu_check.py). Wheels the GPU image lacks (FastAPI, uvicorn, pydantic, ...) travel in
# .whl/, made here beforehand by scripts/gpu_wheels.sh. Writes $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import fastapi, uvicorn, pydantic_settings" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
timeout 460 python3 scripts/gpu_check.py --out "${OUT:-.}" --device "${DEVICE:-cuda}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
