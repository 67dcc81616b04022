#!/usr/bin/env python3
"""Load a model folder (and optionally a PEFT LoRA adapter) written by secure-tuning with
transformers/peft, run fixed token ids, and write the last position's logits for a Rust test.

Run by hand (NOT in CI), from the repository root, with the venv of integrations/torch/README.md:

    .venv-torch/bin/python integrations/torch/scripts/check_hf_interop.py \\
        --model runs/tuned-model [--adapter runs/tuned-adapter] \\
        [--ids 1,15,27,42,63,5,88,101] [--out interop_logits.json]

Inputs:
  --model DIR    a Hugging Face model folder (config.json + model.safetensors [+ tokenizer]); loaded
                 with ``AutoModelForCausalLM.from_pretrained(DIR, dtype=float32,
                 attn_implementation="eager")``.
  --adapter DIR  optional PEFT adapter folder: adapter_config.json + adapter_model.safetensors
                 whose keys are PEFT's saved names, e.g.
                 ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (no adapter-name
                 segment). Loaded with ``peft.PeftModel.from_pretrained(model, DIR)``. The script
                 then checks that every tensor in the file was loaded into the model unchanged
                 and that the model has no adapter tensor the file lacks (PEFT itself only warns),
                 and fails listing the offenders otherwise.
  --ids          comma-separated token ids (default 1,15,27,42,63,5,88,101), run as one
                 sequence (batch 1, no padding, no attention mask).
  --out FILE     where to write the JSON (default: print it only).

Output: one JSON object, written to --out (with a one-line summary printed) or else printed:

    {
      "model": "<DIR as given>",
      "adapter": "<DIR as given>" or null,
      "token_ids": [int, ...],                  # the ids run, in order
      "logits": [float, ...],                   # float32 logits at the LAST position, vocab-long
      "argmax": int,                            # argmax of "logits"
      "versions": {"torch": "...", "transformers": "...", "peft": "..." or null}
    }

A Rust test loads the same folder(s), runs the same ids and compares its last-position logits
with "logits" (the fixtures' parity tests use 1e-4).
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

DEFAULT_IDS = "1,15,27,42,63,5,88,101"


def check_adapter_loaded(peft_model, adapter_dir):
    """Every tensor of adapter_model.safetensors is in the model, equal; no adapter tensor is missing."""
    from safetensors.torch import load_file

    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    saved = load_file(path)
    live = {}
    for name, p in peft_model.named_parameters():
        if ".lora_" in name:
            # PEFT's live name has the adapter-name segment: ...lora_A.default.weight
            parts = name.split(".")
            key = ".".join(x for i, x in enumerate(parts) if not (i > 0 and parts[i - 1].startswith("lora_")))
            live[key] = p
    unused = sorted(k for k in saved if k not in live)
    missing = sorted(k for k in live if k not in saved)
    differ = sorted(k for k in saved if k in live and not torch.equal(live[k].detach().float(), saved[k].float()))
    problems = []
    if unused:
        problems.append(f"{len(unused)} tensor(s) in {path} that the model has no place for:\n  " + "\n  ".join(unused))
    if missing:
        problems.append(
            f"{len(missing)} adapter tensor(s) of the model missing from {path}:\n  " + "\n  ".join(missing)
        )
    if differ:
        problems.append(f"{len(differ)} tensor(s) loaded with other values:\n  " + "\n  ".join(differ))
    if problems:
        raise SystemExit("adapter check failed:\n" + "\n".join(problems))
    return len(saved)


def last_logits(model_dir, adapter_dir=None, ids=None):
    """The result object described in the module docstring."""
    ids = [int(x) for x in (ids or DEFAULT_IDS.split(","))]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    vocab = model.get_output_embeddings().weight.shape[0]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise SystemExit(f"token ids {bad} are outside the model's vocabulary (size {vocab})")
    peft_version = None
    if adapter_dir is not None:
        import peft

        peft_version = peft.__version__
        model = peft.PeftModel.from_pretrained(model, adapter_dir)
        n = check_adapter_loaded(model, adapter_dir)
        print(f"adapter: {n} tensors loaded from {adapter_dir}", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return {
        "model": model_dir,
        "adapter": adapter_dir,
        "token_ids": ids,
        "logits": [float(x) for x in logits],
        "argmax": int(logits.argmax()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_version},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--ids", default=DEFAULT_IDS)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    result = last_logits(a.model, a.adapter, a.ids.split(","))
    text = json.dumps(result)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        lg = result["logits"]
        print(f"{len(result['token_ids'])} ids -> {len(lg)} logits at the last position, argmax {result['argmax']}, "
              f"first {', '.join(f'{x:.6f}' for x in lg[:4])}; written to {a.out}")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
