#!/usr/bin/env bash
# Everything a machine needs to run the notebooks: evcxr_jupyter (the Rust kernel), Jupyter,
# and one quick execution of every notebook so the kernel's dependency cache is warm.
# binder/Dockerfile runs it at image build time; it is tests/notebooks.sh with a venv in $HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
# Unlike CI, Binder builds the kernel optimised (about 20 minutes once, at image build time):
# evcxr runs rust-analyzer inside the kernel to learn each variable's type, and unoptimised that
# adds about a minute to a visitor's first cells of every notebook.
EVCXR_OPT_LEVEL=${EVCXR_OPT_LEVEL:-3} NOTEBOOK_VENV=${NOTEBOOK_VENV:-$HOME/.venv-notebooks} tests/notebooks.sh
# The run's shared build folder is not needed by a visitor's kernel (it starts its own, and the
# evcxr cache in ~/.cache/evcxr serves its dependencies); leave it out of the image.
rm -rf target/evcxr-notebooks
