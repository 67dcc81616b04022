#!/usr/bin/env bash
# Executes every notebook headlessly with the evcxr Rust kernel and fails on any cell error,
# any panic or `Error:` in a cell's output, or a notebook without an inline chart.
#
#   tests/notebooks.sh              # quick configuration (SECURE_TUNING_QUICK=1), outputs discarded
#   tests/notebooks.sh --full       # full configuration, outputs written back into notebooks/
#
# The same install steps serve binder/Dockerfile (binder/setup.sh calls this script).
set -euo pipefail
cd "$(dirname "$0")/.."
EVCXR_VERSION=0.22.0
if ! cargo install --list | grep -q "^evcxr_jupyter v$EVCXR_VERSION:"; then
  # The kernel embeds rust-analyzer, which types every cell's variables. Built at opt-level 1 it
  # takes about 9 minutes on 2 cores and answers a notebook's first cells in about 55 s; built at
  # opt-level 0 (about 3 minutes) the same cells took about 290 s in every notebook. Binder's
  # image builds it at opt-level 3 (binder/setup.sh), since there a visitor waits on every cell.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=${EVCXR_OPT_LEVEL:-1} cargo install --locked evcxr_jupyter --version "$EVCXR_VERSION"
fi
evcxr_jupyter --install >/dev/null
# The kernel's rust-analyzer looks for the standard library's source (rustup's rust-src) when it
# types the variables kept between cells; add it where rustup can (a failure is not fatal).
if command -v rustup >/dev/null && ! rustup component list --installed 2>/dev/null | grep -q "^rust-src"; then
  rustup component add rust-src || echo "notebooks.sh: could not add rust-src; continuing without it" >&2
fi
VENV=${NOTEBOOK_VENV:-.venv-notebooks}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q nbclient==0.10.2 nbformat==5.10.4 ipykernel jupyter_client
fi
# The kernels of one run share one build folder per lane (EVCXR_TMPDIR, and EVCXR_TMPDIR-laneK for
# the others), so a notebook reuses what the one before it in its lane compiled instead of building
# it again in a fresh temporary folder (measured: a later notebook's first two cells 8 s each
# instead of 1-2 minutes).
export EVCXR_TMPDIR=${EVCXR_TMPDIR:-$PWD/target/evcxr-notebooks}
mkdir -p "$EVCXR_TMPDIR"
if [ "${1:-}" = "--full" ]; then
  # One at a time: the written outputs record each cell's wall time on an otherwise idle machine.
  "$VENV/bin/python" tests/run_notebooks.py --write notebooks/*.ipynb
else
  # Two kernels at a time after the first notebook (see tests/run_notebooks.py for why).
  SECURE_TUNING_QUICK=1 "$VENV/bin/python" tests/run_notebooks.py --jobs="${NOTEBOOK_JOBS:-2}" notebooks/*.ipynb
fi
