#!/usr/bin/env python3
"""A real DistributedDataParallel run of a plan exported by ``secure-tuning export-plan``
(ML-LR with a SWAT start step), checked against the same training in one process.

``run_ddp_check.sh`` (beside this file) runs the whole flow and writes ``ddp_run.txt``. By hand,
from the repository root, with the venv of integrations/torch/README.md (torch + transformers):

    # 1. a random 2.4M-parameter Llama saved as a Hugging Face folder (the fixture tokenizer)
    .venv-torch/bin/python integrations/torch/examples/ddp_plan.py --save-model /tmp/ddp/model
    # 2. the plan, from the Rust tool (rest and non-module join at step round(0.375 x 8) = 3)
    echo '{"modules": ["L0.q", "L0.v", "L1.q", "L1.v", "L3.down"]}' > /tmp/ddp/robust.json
    target/release/secure-tuning export-plan --model /tmp/ddp/model --robust /tmp/ddp/robust.json \\
        --ratio 0.1 --swat 0.375 --lr 1e-3 --steps 8 --batch-size 8 --weight-decay 0.1 --max-len 64 \\
        --out /tmp/ddp/plan.json
    # 3. 2 processes on this machine's CPU (gloo), each taking half of every global batch ...
    .venv-torch/bin/torchrun --standalone --nproc_per_node 2 integrations/torch/examples/ddp_plan.py \\
        --plan /tmp/ddp/plan.json --out /tmp/ddp/ddp.safetensors
    # ... and the same run in one process on the whole batch
    .venv-torch/bin/python integrations/torch/examples/ddp_plan.py --plan /tmp/ddp/plan.json \\
        --out /tmp/ddp/single.safetensors
    # 4. final weights compared tensor by tensor (fails above --tolerance, default 1e-5)
    .venv-torch/bin/python integrations/torch/examples/ddp_plan.py --plan /tmp/ddp/plan.json \\
        --compare /tmp/ddp/ddp.safetensors /tmp/ddp/single.safetensors

On GPUs: ``torchrun --nproc_per_node N ... --backend nccl`` (each rank uses cuda:LOCAL_RANK).

The model (``--save-model``) is a random Llama (4 layers, hidden 192, MLP 832, 6 heads, 2 KV
heads, untied lm_head: 2,434,752 parameters) built under ``torch.manual_seed(0)`` in float32,
with vocab 320, the size of the tokenizer of ``tests/fixtures/llama3``, whose tokenizer.json,
tokenizer_config.json, chat_template.jinja and generation_config.json are copied beside it.
Training reads the model from ``--model`` (default: the plan's ``model.name_or_path``) and
everything else from the plan: groups, LRs and start steps, AdamW, schedule, clipping, steps,
the global batch (``batch_size``, split evenly over the processes) and ``max_len``.

Data: at step s, a fixed global batch of ``batch_size`` examples (ids from a generator seeded
with 1000 + s, lengths 24-48 tokens, at most ``max_len``); rank r of W takes the r-th of W equal
slices. Each rank's loss is the mean over the response tokens of its examples and DDP averages
the ranks' gradients, so each rank's loss is scaled by ``W * n_rank / n_global`` (a token-weighted
loss): the DDP gradient is then the one-process gradient, the mean over all response tokens of
the batch. The batch's second half repeats the first half's lengths and loss_start, so with 2
processes the weight is exactly 1 and the two runs differ only by float rounding in the
all-reduce; with other counts of processes the weights differ from 1, which adds rounding that
Adam amplifies on near-zero gradients (measured: max |diff| 4.3e-5 with 2 processes on batches
whose halves differ).

Only rank 0 prints: each step's loss (the batch's token mean), the pre-clip global gradient norm,
the LR in effect for every plan group (0 before a group starts) and each group's largest
weight change in that step (0 before it starts). ``--compare`` prints, per group, the largest
difference between the two runs' final weights and the largest change from the initial weights.
"""
import argparse
import os
import shutil
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))  # the package from this checkout if not installed

from secure_tuning_torch import Example, PlanStepper, collate, load_plan, named_plan_parameters, response_loss  # noqa: E402

TOKENIZER_FROM = os.path.join(ROOT, "tests", "fixtures", "llama3")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
VOCAB = 320  # the fixture tokenizer's size (checked in save_model)


def save_model(out_dir):
    """Builds the random Llama and saves it with the fixture tokenizer as a Hugging Face folder."""
    import transformers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=192, intermediate_size=832, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(TOKENIZER_FROM, name), os.path.join(out_dir, name))
    tok = AutoTokenizer.from_pretrained(out_dir)
    if len(tok) != cfg.vocab_size:
        raise SystemExit(f"tokenizer has {len(tok)} tokens, the model's vocabulary {cfg.vocab_size}")
    n = sum(p.numel() for p in model.parameters())
    print(f"random Llama, {n} parameters, vocab {cfg.vocab_size} (= the tokenizer's) -> {out_dir}")


def load_model(path):
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def global_batch(step, size, vocab, max_len):
    """``size`` random examples of 24-48 tokens, the loss starting at token 4-15; the second half
    repeats the first half's lengths and loss_start (same number of response tokens)."""
    g = torch.Generator().manual_seed(1000 + step)
    shapes = [(int(torch.randint(24, 49, (1,), generator=g)), int(torch.randint(4, 16, (1,), generator=g)))
              for _ in range(size // 2)]
    shapes = shapes + shapes + shapes[:size % 2]
    assert all(n <= max_len for n, _ in shapes), f"examples longer than the plan's max_len {max_len}"
    return [Example(tuple(int(x) for x in torch.randint(3, vocab, (n,), generator=g)), k) for n, k in shapes]


def train(args):
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group(args.backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.backend == "nccl" else "cpu")
    log = print if rank == 0 else (lambda *a, **k: None)

    plan = load_plan(args.plan)  # every rank reads the same file (ship it with a multi-node job)
    if plan.grad_accum != 1 or plan.batch_size % world:
        raise SystemExit(f"this example needs grad_accum 1 and batch_size ({plan.batch_size}) divisible by "
                         f"the {world} processes")
    model_path = args.model or plan.model.name_or_path
    model = load_model(model_path).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"world size {world}, backend {args.backend if distributed else 'none'}, torch {torch.__version__}; "
        f"model folder {model_path}: {n_params} parameters")
    s = plan.schedule
    log(f"plan {os.path.basename(args.plan)}: strategy {plan.strategy}, base_lr {plan.base_lr:g}, {s.total_steps} steps "
        f"(warm-up {s.warmup_steps}, cosine to {s.min_lr_ratio:g}), global batch {plan.batch_size}, "
        f"clip {plan.clip_grad_norm}, weight decay {plan.optimizer.weight_decay:g}")
    for g in plan.groups:
        log(f"group {g.name:<10} lr x{g.lr_scale:<4g} from step {g.start_step}  {len(g.params)} tensors")
    log(f"frozen: {len(plan.frozen)} tensors")

    stepper = PlanStepper(model, plan)  # param groups from the bare model (before DDP wraps it)
    params = named_plan_parameters(model)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    per_rank = plan.batch_size // world
    t0 = time.time()
    for s in range(plan.schedule.total_steps):
        batch = global_batch(s, plan.batch_size, model.config.vocab_size, plan.max_len)
        mine = batch[rank * per_rank:(rank + 1) * per_rank]
        tokens = sum(e.response_tokens for e in mine)
        n_global = sum(e.response_tokens for e in batch)
        weight = world * tokens / n_global  # token weighting: DDP's mean of the ranks' gradients is then
        loss, _ = response_loss(net, collate(mine, device=device))  # the one-process gradient
        stepper.backward(loss * weight)  # DDP all-reduces (averages) the gradients here
        shown = loss.detach() * (tokens / n_global)  # summed over the ranks: the batch's token mean
        if distributed:
            dist.all_reduce(shown)
        if s == 0:  # the averaged step-1 gradients (before clipping), to compare the runs
            grads1 = {"grad_step1." + n: p.grad.detach().cpu().clone() for n, p in params.items() if p.grad is not None}
        before = {g.name: [p.detach().clone() for p in (params[n] for n in g.params)] for g in plan.groups}
        out = stepper.step()
        moved = {g.name: max(float((p - b).abs().max()) for p, b in zip((params[n] for n in g.params), before[g.name]))
                 for g in plan.groups}
        log(f"step {s + 1}/{plan.schedule.total_steps}  loss {float(shown):.8f}  grad-norm {out.grad_norm:.8f}  "
            f"response tokens: rank 0 {tokens} of {n_global}, loss weight {weight:.6f}")
        log("    lr in effect: " + "  ".join(f"{k} {v:.4e}" for k, v in out.lrs.items())
            + "   max |update|: " + "  ".join(f"{k} {v:.3e}" for k, v in moved.items()))
    log(f"{plan.schedule.total_steps} steps in {time.time() - t0:.1f} s")
    if rank == 0 and args.out:
        from safetensors.torch import save_file

        weights = {n: p.detach().cpu().contiguous() for n, p in named_plan_parameters(model).items()}
        save_file({**weights, **grads1}, args.out)
        log(f"final weights -> {args.out}")
    if distributed:
        dist.destroy_process_group()


def compare(a_path, b_path, plan_path, model_path=None):
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys(), "the two files hold different tensors"
    grads = [n for n in a if n.startswith("grad_step1.")]
    g_diff = max(float((a[n] - b[n]).abs().max()) for n in grads)
    g_max = max(float(a[n].abs().max()) for n in grads)
    g_same = sum(torch.equal(a[n], b[n]) for n in grads)
    print(f"step-1 gradients (after DDP's all-reduce, before clipping): max |a - b| {g_diff:.3e} "
          f"(largest |grad| {g_max:.3e}); {g_same} of {len(grads)} tensors bit-identical")
    a = {n: t for n, t in a.items() if not n.startswith("grad_step1.")}
    b = {n: t for n, t in b.items() if not n.startswith("grad_step1.")}
    plan = load_plan(plan_path)
    init = {n: p.detach() for n, p in named_plan_parameters(load_model(model_path or plan.model.name_or_path)).items()}
    assert a.keys() == init.keys(), "the files do not hold the model's tensors"
    group_of = {n: g.name for g in plan.groups for n in g.params}
    worst = (0.0, "")
    per_group = {}
    for n in sorted(a):
        d = float((a[n] - b[n]).abs().max())
        moved = float((a[n] - init[n]).abs().max())
        g = group_of.get(n, "frozen")
        cur = per_group.setdefault(g, [0.0, 0.0])
        cur[0], cur[1] = max(cur[0], d), max(cur[1], moved)
        worst = max(worst, (d, n))
    same = sum(torch.equal(a[n], b[n]) for n in a)
    print(f"compare {a_path} vs {b_path}: {len(a)} tensors, {same} bit-identical")
    for g, (d, moved) in per_group.items():
        print(f"  {g:<10} max |a - b| {d:.3e}   max |a - init| {moved:.3e}")
    print(f"max |a - b| over all tensors: {worst[0]:.3e} ({worst[1]})")
    return worst[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-model", metavar="DIR", help="build the random Llama and save it as a Hugging Face folder")
    ap.add_argument("--plan", help="the plan (secure-tuning export-plan --out) to train or to compare by")
    ap.add_argument("--model", help="the model folder (default: the plan's model.name_or_path)")
    ap.add_argument("--out", help="safetensors file for the final weights (rank 0 writes it)")
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--tolerance", type=float, default=1e-5, help="--compare fails above this")
    args = ap.parse_args()
    if args.save_model:
        save_model(args.save_model)
    elif not args.plan:
        ap.error("--plan is required (except with --save-model)")
    elif args.compare:
        worst = compare(*args.compare, args.plan, args.model)
        if worst > args.tolerance:
            raise SystemExit(f"max |a - b| {worst:.3e} is above the tolerance {args.tolerance:g}")
        print(f"within tolerance {args.tolerance:g}")
    else:
        train(args)


if __name__ == "__main__":
    main()
