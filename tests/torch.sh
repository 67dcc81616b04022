#!/usr/bin/env bash
# Runs the PyTorch integration's tests (integrations/torch, pytest) in their own virtual
# environment, installed from PyPI on first use with the pinned versions below (torch's Linux
# wheel is the CUDA build and runs on the CPU: about 2.9 GB to download, 5.6 GB installed).
#
#   tests/torch.sh          # TORCH_VENV selects the environment (default .venv-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCH_VENV:-.venv-torch}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, peft, pytest" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.24.0 peft==0.21.2 accelerate==1.16.0 \
    safetensors==0.8.0 pytest==9.2.0
fi
cd integrations/torch
"../../$VENV/bin/python" -m pytest -q -p no:cacheprovider
