#!/usr/bin/env bash
# Download the wheels the GPU image lacks (Python 3.12, x86-64) into .whl/ (git-ignored), for the device
# tool to carry: run(command="bash scripts/gpu_check.sh", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "fastapi==0.136.3" "starlette==1.10.0" "uvicorn==0.54.0" "pydantic==2.14.4" "pydantic-core==2.50.5" \
  "pydantic-settings==2.16.3" "annotated-types==0.8.0" "typing-inspection==0.4.5" "python-dotenv==1.2.4"
ls -la .whl
