#!/usr/bin/env bash
# Makes the ROUGE reference environment that tests/eval_rouge.test.ts uses (tests/.tmp/venv-rouge):
# Google's rouge-score from PyPI (with nltk, absl-py, numpy; ~40 MB, no torch). Idempotent: a working
# environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${PERFIT_ROUGE_VENV:-tests/.tmp/venv-rouge}"
if "$venv/bin/python" -c "import rouge_score" 2>/dev/null; then
  echo "ROUGE reference venv ready: $venv"
  exit 0
fi
mkdir -p "$(dirname "$venv")"
# CI links the venv into a cache outside the clone: build it at the link's target.
if [ -L "$venv" ]; then venv="$(readlink -m "$venv")"; mkdir -p "$venv"; fi
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "rouge-score==0.1.2"
"$venv/bin/python" -c "import importlib.metadata as m; print('ROUGE reference venv ready: rouge-score', m.version('rouge-score'))"
