#!/usr/bin/env bash
# Trains a plan exported by the Rust tool with DDP and in one process, and compares the final
# weights; writes everything to ddp_run.txt beside this script. From the repository root:
#
#     bash integrations/torch/examples/run_ddp_check.sh [path/to/venv]    # default .venv-torch
#
# SECURE_TUNING_BIN: the secure-tuning binary (default target/release/secure-tuning; build it
# with `cargo build --release`). Steps, all in a temporary folder:
#   1. ddp_plan.py --save-model model: a random 2.4M-parameter Llama with the fixture tokenizer;
#   2. secure-tuning export-plan on that folder: ML-LR (rest x0.1) + SWAT 0.375 of 8 steps, so
#      the rest and non-module groups join at step 3;
#   3. torchrun, 2 processes (gloo, CPU), then one process, both training that plan;
#   4. ddp_plan.py --compare: max |difference| of the final weights (fails above 1e-5).
set -euo pipefail
VENV=$(cd "${1:-.venv-torch}" && pwd)
BIN=${SECURE_TUNING_BIN:-target/release/secure-tuning}
if [ ! -x "$BIN" ]; then
  echo "no secure-tuning binary at $BIN: run cargo build --release, or set SECURE_TUNING_BIN" >&2
  exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
LOG="$HERE/ddp_run.txt"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"  # every path below is relative to it, as the log shows them
export PYTHONWARNINGS=ignore
PY="$VENV/bin/python"
EX=integrations/torch/examples/ddp_plan.py
ROBUST='{"modules": ["L0.q", "L0.v", "L1.q", "L1.v", "L3.down"]}'
EXPORT=(export-plan --model model --robust robust.json --ratio 0.1 --swat 0.375 --lr 1e-3 --steps 8
        --batch-size 8 --weight-decay 0.1 --max-len 64 --out plan.json)
{
  echo "# ddp_plan.py: an exported plan, DDP (torchrun, 2 processes, gloo, CPU) vs one process on the full batch"
  echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPU cores, $("$BIN" --version)," \
       "$("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
  echo "# run in a temporary folder; $EX is this script's neighbour"
  echo
  echo "\$ python $EX --save-model model"
  "$PY" "$HERE/ddp_plan.py" --save-model model 2>&1
  echo
  echo "\$ echo '$ROBUST' > robust.json"
  echo "$ROBUST" > robust.json
  echo "\$ secure-tuning ${EXPORT[*]}"
  "$BIN" "${EXPORT[@]}"
  echo
  echo "\$ torchrun --standalone --nproc_per_node 2 $EX --plan plan.json --out ddp.safetensors"
  "$VENV/bin/torchrun" --standalone --nproc_per_node 2 "$HERE/ddp_plan.py" --plan plan.json --out ddp.safetensors 2>&1 \
    | grep -v -e '^W[0-9]' -e 'OMP_NUM_THREADS' -e '^\*\*\*'
  echo
  echo "\$ python $EX --plan plan.json --out single.safetensors"
  "$PY" "$HERE/ddp_plan.py" --plan plan.json --out single.safetensors 2>&1
  echo
  echo "\$ python $EX --plan plan.json --compare ddp.safetensors single.safetensors"
  "$PY" "$HERE/ddp_plan.py" --plan plan.json --compare ddp.safetensors single.safetensors 2>&1
} | tee "$LOG"
