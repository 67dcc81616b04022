#!/usr/bin/env bash
# Everything a machine needs to run the notebooks: evcxr_jupyter (the Rust kernel), Jupyter,
# and one quick execution of every notebook so the kernel's dependency cache is warm.
# binder/Dockerfile runs it at image build time; it is tests/notebooks.sh with a venv in $HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
NOTEBOOK_VENV=${NOTEBOOK_VENV:-$HOME/.venv-notebooks} tests/notebooks.sh
