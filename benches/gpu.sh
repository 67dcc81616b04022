#!/usr/bin/env bash
# Everything the GPU half of the speed issue needs, in one call on the device machine:
#   run from the repository root with gpu-bin/ (from scripts/build-cuda.sh) beside it;
#   results go to $OUT (or ./gpu-out). Each step runs even if an earlier one failed.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
# The binary travels xz-compressed (gpu-pack/) to fit the transfer limit.
if [ ! -x gpu-bin/secure-tuning ] && [ -f gpu-pack/secure-tuning.xz ]; then
  mkdir -p gpu-bin && cp gpu-pack/env.sh gpu-bin/
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open('gpu-pack/secure-tuning.xz'), open('gpu-bin/secure-tuning','wb'))"
  chmod +x gpu-bin/secure-tuning
fi
source gpu-bin/env.sh | tee "$OUT/gpu.txt"
export SECURE_TUNING_HOME=$PWD
ST=gpu-bin/secure-tuning
PY=${PYTHON:-python3}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
$PY -c "import peft; print('peft', peft.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

step() { echo "== $1"; local t=$(date +%s); shift; "$@"; echo "   rc $? in $(( $(date +%s) - t )) s"; }
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > "$OUT/memory.csv" 2>/dev/null &
SMI=$!

# 0. Device selection: with no --device the CLI picks the GPU.
step "auto device" $ST forward --model default --text "Hello" 2>&1 | head -1

# 1. Correctness: the default model's forward on the GPU (f32 and bf16) against the CPU.
for dt in f32 bf16; do
  step "forward cuda $dt" $ST forward --model default --device cuda --dtype $dt --text "How do I bake bread at home?" --json > "$OUT/forward_cuda_$dt.json"
done
step "forward cpu" $ST forward --model default --device cpu --text "How do I bake bread at home?" --json > "$OUT/forward_cpu.json"
$PY - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
cpu = json.load(open(f"{out}/forward_cpu.json"))
for dt in ["f32", "bf16"]:
    try:
        g = json.load(open(f"{out}/forward_cuda_{dt}.json"))
    except Exception as e:
        print(dt, "no result", e); continue
    d_logits = max(abs(a - b) for a, b in zip(cpu["last_logits"], g["last_logits"]))
    d_hidden = max(abs(a - b) for h1, h2 in zip(cpu["hidden_states"], g["hidden_states"]) for a, b in zip(h1, h2))
    top = lambda v: max(range(len(v)), key=v.__getitem__)
    print(f"parity {dt}: max |logit diff| {d_logits:.2e}, max |hidden diff| {d_hidden:.2e}, same argmax {top(cpu['last_logits']) == top(g['last_logits'])}")
PY

# 2. Training on the GPU: the probe and a short ML-LR run of the default model.
step "probe cuda" $ST probe --model default --device cuda --json > "$OUT/probe_cuda.json"
for dev in "cuda --dtype f32" "cuda" "cpu"; do
  tag=$(echo $dev | tr -d ' -')
  step "tune $dev" $ST tune --model default --device $dev --data data/ift_general.jsonl --out "$OUT/tuned" --steps 30 --json > "$OUT/tune_$tag.json"
  rm -rf "$OUT/tuned"
done
$PY - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
runs = {}
for tag in ["cudadtypef32", "cuda", "cpu"]:
    try:
        s = open(f"{out}/tune_{tag}.json").read(); runs[tag] = json.loads(s[s.index("{"):s.rindex("}") + 1])
    except Exception as e:
        print("tune", tag, "no result", e)
for tag, r in runs.items():
    l = [x[1] for x in r["losses"]]
    print(f"tune {tag}: loss {l[0]:.4f} -> {l[-1]:.4f}, {r['seconds']:.1f} s for {r['steps']} steps")
if "cpu" in runs and "cudadtypef32" in runs:
    d = max(abs(a[1] - b[1]) for a, b in zip(runs["cpu"]["losses"], runs["cudadtypef32"]["losses"]))
    print(f"tune f32: max |loss diff| cuda vs cpu over 30 steps {d:.2e}")
PY

# 3. Speed against PyTorch, same call, same card.
# One workload per call, so a failure (e.g. out of memory) costs one row, not the table.
for p in qwen2.5-0.5b llama-3.2-1b; do
  for w in forward full-step lora-step generate; do
    step "bench $p $w" $ST bench --preset $p --device cuda --workloads $w --torch $PY --json > "$OUT/bench_${p}_$w.json"
  done
done
step "bench default" $ST bench --preset default --device cuda --torch $PY --json > "$OUT/bench_default.json"
kill $SMI 2>/dev/null
$PY - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
print(f"{'preset':<14}{'workload':<11}{'candle ms':>10}{'torch ms':>10}{'ratio':>7}{'tok/s':>10}{'MFU':>6}")
for f in sorted(glob.glob(f"{out}/bench_*.json")):
    try:
        s = open(f).read(); d = json.loads(s[s.index("{"):s.rindex("}") + 1])
    except Exception:
        print(f, "failed"); continue
    for r, c in zip(d["rows"], d["candle"]["rows"]):
        mfu = f"{c['mfu'] * 100:.0f}%" if c.get("mfu") else "-"
        print(f"{d['candle']['preset']:<14}{r['workload']:<11}{r['candle_ms']:>10.1f}{r['torch_ms']:>10.1f}{r['ratio']:>7.2f}{c['tokens_per_s']:>10.0f}{mfu:>6}")
try:
    mem = [int(l.split(",")[1].split()[0]) for l in open(f"{out}/memory.csv") if "," in l]
    print(f"peak GPU memory used {max(mem)} MiB")
except Exception as e:
    print("no memory log", e)
PY
