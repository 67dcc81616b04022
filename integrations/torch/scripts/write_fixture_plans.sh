#!/usr/bin/env bash
# Writes the plan fixtures tests/fixtures/plans/<arch>/plan*.json with `secure-tuning export-plan`
# (the plans PyTorch then trains in make_parity_refs.py). Run by hand, from the repository root:
#
#   integrations/torch/scripts/write_fixture_plans.sh
#   .venv-torch/bin/python integrations/torch/scripts/make_parity_refs.py
#
# Every plan: lr 1e-3, 3 steps (warm-up 1, cosine to 0.1), batch 4, AdamW weight decay 0.1,
# clip 1.0; robust set layers.0 q and v, layers.1 down. plan.json: ML-LR, the rest at 0.1x.
# plan_swat.json: the same with SWAT, the rest joining at step 1 (round(0.34 x 3)).
# plan_frozen.json: freeze-rest, ratio 0. batch.json (4 token-id examples) is committed data.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --quiet
robust=$(mktemp --suffix=.json)
echo '{"modules": ["L0.q", "L0.v", "L1.down"]}' > "$robust"
for arch in llama3 qwen2 mistral; do
  out=tests/fixtures/plans/$arch
  common=(export-plan --model tests/fixtures/$arch --robust "$robust" --lr 1e-3 --steps 3 --batch-size 4
          --weight-decay 0.1 --max-len 32)
  target/release/secure-tuning "${common[@]}" --ratio 0.1 --out $out/plan.json > /dev/null
  target/release/secure-tuning "${common[@]}" --ratio 0.1 --swat 0.34 --out $out/plan_swat.json > /dev/null
  target/release/secure-tuning "${common[@]}" --ratio 0 --out $out/plan_frozen.json > /dev/null
  echo "wrote $out/plan.json, plan_swat.json, plan_frozen.json"
done
rm "$robust"
