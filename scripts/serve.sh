#!/usr/bin/env bash
# Set up (first run only does real work) and start the demo server on 127.0.0.1:8000 with the demo
# experts registered. Admin endpoints need SWITCHYARD_SECURITY__ADMIN_TOKEN to be set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/switchyard serve --config config/demo.yaml "$@"
