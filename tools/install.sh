#!/usr/bin/env bash
# Install caffeinit (editable) and its dependencies; `tools/install.sh test` adds what the tests need.
# torch goes in first: without a GPU the CPU build (2.13.0 is the CPU build on these machines; elsewhere use
# PyTorch's CPU wheel index), with a GPU whatever CUDA build pip picks within the declared range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch>=2.1,<2.15"
  else
    "$PY" -m pip install -q "torch==2.13.0"
  fi
fi
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
"$PY" -m pip install -q -e ".${extra}"
