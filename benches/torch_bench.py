"""The PyTorch + transformers side of `secure-tuning bench --torch`: the same four workloads on a
model with the same config.json, random weights, the same shapes and dtype.

  forward    model.model(ids, output_hidden_states=True) under inference_mode (probe features)
  full-step  loss, backward, clip_grad_norm_(1.0), AdamW with two groups: attention at lr,
             everything else at 0.1 lr (ML-LR with the attention modules as the robust set)
  lora-step  the same with LoRA r on all seven projection kinds (peft when installed, else a
             minimal LoRA layer of our own), base frozen, adapters in f32
  generate   HF generate, greedy, batch 1, exactly --gen-tokens new tokens

Prints one JSON line: {"versions": "...", "rows": [{"workload", "ms", "tokens_per_s"}, ...]}.
Run by the Rust side with the preset's config (see src/bench.rs); usable alone as well.
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def timed(device, warmup, iters, fn):
    """Median milliseconds of fn() over iters runs after warmup runs, each ended by a device sync."""
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        fn()
        sync(device)
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(config, dtype, device):
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    return model.to(device)


class Lora(torch.nn.Module):
    """y = base(x) + scale * B(A(x)), adapters in f32; used only when peft is not installed."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank

    def forward(self, x):
        low = self.lora_B(self.lora_A(x.to(torch.float32))) * self.scale
        return self.base(x) + low.to(x.dtype)


def add_lora(model, rank):
    """Adapters on all seven kinds; returns (model, how)."""
    try:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=KINDS, bias="none")
        import peft

        return get_peft_model(model, cfg), f"peft {peft.__version__}"
    except ImportError:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in list(model.named_modules()):
            for kind in KINDS:
                child = getattr(module, kind, None)
                if isinstance(child, torch.nn.Linear):
                    setattr(module, kind, Lora(child, rank, 2 * rank))
        return model, "own LoRA layer (peft not installed)"


def train_step_fn(model, ids, lr):
    """One ML-LR step: attention (or its adapters) at lr, the rest at 0.1 lr."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    attn = [p for n, p in params if any(k in n for k in ATTENTION)]
    rest = [p for n, p in params if not any(k in n for k in ATTENTION)]
    opt = torch.optim.AdamW([{"params": attn, "lr": lr}, {"params": rest, "lr": 0.1 * lr}], lr=lr, weight_decay=0.0)
    trainable = attn + rest

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a config.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--gen-prompt", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--workloads", default="forward,full-step,lora-step,generate")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    config = AutoConfig.for_model(**json.load(open(args.config)))
    config.use_cache = True
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    tokens = args.batch * args.seq
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    rows = []

    def row(workload, ms, n):
        rows.append({"workload": workload, "ms": ms, "tokens_per_s": n / (ms / 1e3)})

    for workload in args.workloads.split(","):
        if workload == "forward":
            model = build(config, dtype, device).eval()
            with torch.inference_mode():
                ms = timed(device, args.warmup, args.iters, lambda: model.model(input_ids=ids, output_hidden_states=True))
            row(workload, ms, tokens)
        elif workload == "full-step":
            model = build(config, dtype, device).train()
            ms = timed(device, args.warmup, args.iters, train_step_fn(model, ids, 1e-5))
            row(workload, ms, tokens)
        elif workload == "lora-step":
            model, how = add_lora(build(config, dtype, device), args.lora_rank)
            versions += f", LoRA via {how}"
            model.train()
            ms = timed(device, args.warmup, args.iters, train_step_fn(model, ids, 1e-5))
            row(workload, ms, tokens)
        elif workload == "generate":
            model = build(config, dtype, device).eval()
            prompt = torch.randint(1, config.vocab_size, (1, args.gen_prompt), generator=gen).to(device)
            n = args.gen_tokens

            def generate():
                model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )

            with torch.inference_mode():
                ms = timed(device, min(args.warmup, 1), min(args.iters, 3), generate)
            row(workload, ms, n)
        else:
            raise SystemExit(f"unknown workload {workload!r}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps({"versions": versions, "rows": rows}))


if __name__ == "__main__":
    main()
