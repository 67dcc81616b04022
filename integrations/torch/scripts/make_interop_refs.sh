#!/usr/bin/env bash
# What we produce loads where users deploy: for each fixture architecture, fine-tune the tiny
# model here with LoRA (3 steps), save it merged in the Hugging Face layout and its adapters in
# PEFT's format, then let transformers and peft load them and record their logits. Run by hand,
# from the repository root (needs .venv-torch, see integrations/torch/README.md):
#
#   integrations/torch/scripts/make_interop_refs.sh
#
# Writes tests/fixtures/interop/<arch>/{model/, adapter/, model_logits.json, adapter_logits.json};
# tests/interop.rs loads the same folders with this crate and compares its logits (1e-4, f32).
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --quiet
data=$(mktemp --suffix=.jsonl)
for i in 1 2 3 4 5 6 7 8; do
  echo "{\"instruction\": \"What is $i plus $i?\", \"output\": \"$((2 * i)) is the answer.\"}" >> "$data"
done
for arch in llama3 qwen2 mistral; do
  out=tests/fixtures/interop/$arch
  rm -rf "$out" && mkdir -p "$out"
  target/release/secure-tuning tune --model tests/fixtures/$arch --data "$data" --lora 4 --lr 5e-2 --steps 3 \
    --batch-size 4 --out "$out/model" --adapters-out "$out/adapter" > /dev/null
  .venv-torch/bin/python integrations/torch/scripts/check_hf_interop.py --model "$out/model" \
    --out "$out/model_logits.json"
  .venv-torch/bin/python integrations/torch/scripts/check_hf_interop.py --model tests/fixtures/$arch \
    --adapter "$out/adapter" --out "$out/adapter_logits.json"
done
rm "$data"
