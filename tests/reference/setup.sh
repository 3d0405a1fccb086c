#!/usr/bin/env bash
# Creates the Python venv the PyTorch reference check and benchmark use (tests/.tmp/torchvenv).
# PyPI only: its Linux torch wheel is the CUDA build (several GB with its nvidia-* dependencies); it
# runs on CPU without a GPU. Idempotent: a working venv is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=tests/.tmp/torchvenv
if "$VENV/bin/python" -c "import torch, transformers, safetensors, numpy" 2>/dev/null; then
  echo "reference venv ready: $VENV"
  exit 0
fi
# A half-installed or damaged venv is rebuilt from scratch rather than patched.
mkdir -p tests/.tmp
# CI links the venv into a cache outside the clone: rebuild it at the link's target.
if [ -L "$VENV" ]; then VENV="$(readlink -m "$VENV")"; mkdir -p "$VENV"; else rm -rf "$VENV"; fi
python3 -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch numpy transformers safetensors
"$VENV/bin/python" -c "import torch, transformers; print('reference venv ready: torch', torch.__version__, 'transformers', transformers.__version__)"
