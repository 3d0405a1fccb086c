#!/usr/bin/env bash
# Makes the PEFT reference environment that tests/export_peft_reference.test.ts uses
# (tests/.tmp/venv-peft). PyPI only. When the model area's torch venv exists
# (tests/reference/setup.sh -> tests/.tmp/torchvenv) it is reused read-only through a .pth file and only
# PEFT is added, so CI downloads torch once; otherwise a pinned torch/transformers/PEFT set is installed
# (PyPI's Linux torch wheel pulls the CUDA runtime wheels, ~3 GB; it runs on CPU).
# Idempotent: a working environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${PERFIT_PEFT_VENV:-tests/.tmp/venv-peft}"
if "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
  echo "PEFT reference venv ready: $venv"
  exit 0
fi
mkdir -p "$(dirname "$venv")"
# CI links the venv into a cache outside the clone: build it at the link's target.
if [ -L "$venv" ]; then venv="$(readlink -m "$venv")"; mkdir -p "$venv"; fi
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
torchvenv=tests/.tmp/torchvenv
if "$torchvenv/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  site=$("$torchvenv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" | xargs realpath)
  own=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" | xargs realpath)
  echo "$site" > "$own/perfit_torchvenv.pth"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check peft
else
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==2.5.1" "transformers==4.46.3" "peft==0.13.2" "safetensors==0.4.5" "numpy<2.2"
fi
"$venv/bin/python" -c "import torch, transformers, peft; print('PEFT reference venv ready: torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
