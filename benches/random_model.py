"""Writes a random-weight model folder of a preset's shapes (benches/presets/*.json) with the
default model's tokenizer and chat template, for memory and speed measurements of the analysis
commands on shapes larger than the embedded model. Needs torch and safetensors.

    python3 benches/random_model.py benches/presets/llama-3.2-1b.json /tmp/llama-1b-random [--dtype bf16]
"""

import argparse
import json
import pathlib
import shutil

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "data" / "models" / "default"


def shapes(cfg):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", h // heads)
    yield "model.embed_tokens.weight", (v, h)
    yield "model.norm.weight", (h,)
    if not cfg.get("tie_word_embeddings", False):
        yield "lm_head.weight", (v, h)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (heads * hd, h)
        yield p + "self_attn.k_proj.weight", (kv * hd, h)
        yield p + "self_attn.v_proj.weight", (kv * hd, h)
        yield p + "self_attn.o_proj.weight", (h, heads * hd)
        if cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2":
            yield p + "self_attn.q_proj.bias", (heads * hd,)
            yield p + "self_attn.k_proj.bias", (kv * hd,)
            yield p + "self_attn.v_proj.bias", (kv * hd,)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = json.loads(args.preset.read_text())
    # The default tokenizer's special tokens; its 1024 ids all fall inside the preset's vocabulary.
    default_cfg = json.loads((DEFAULT / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg[key] = default_cfg.get(key)
    cfg["torch_dtype"] = {"f32": "float32", "bf16": "bfloat16"}[args.dtype]
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    tensors = {}
    for name, shape in shapes(cfg):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=dtype)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEFAULT / f, args.out / f)
    n = sum(t.numel() for t in tensors.values())
    print(f"{args.out}: {n:,} parameters, {args.dtype}")


if __name__ == "__main__":
    main()
