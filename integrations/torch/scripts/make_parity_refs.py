#!/usr/bin/env python3
"""Reference weights for the Rust trainer's parity tests: 3 PyTorch steps of each fixture plan.

Run by hand (NOT in CI), from the repository root, after the install in
integrations/torch/README.md (torch, transformers, safetensors and this package):

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install './integrations/torch[test]'
    .venv-torch/bin/python integrations/torch/scripts/make_parity_refs.py

For each ``tests/fixtures/plans/<arch>/`` (llama3, qwen2, mistral) and each plan there
(``plan.json``, an ML-LR plan, ``plan_swat.json``, the same with the rest starting at step 1, and
``plan_frozen.json``, the robust set alone), all written by ``write_fixture_plans.sh`` with
``secure-tuning export-plan``:

1. loads ``tests/fixtures/<arch>/`` with transformers in float32 (eager attention), and the plan
   with ``secure_tuning_torch.load_plan``;
2. runs 3 optimizer steps with ``PlanStepper`` (AdamW, per-group LR, warm-up + cosine, global
   clipping over every trainable tensor, unstarted groups dropped after clipping), the batch
   being all 4 examples of ``batch.json`` every step (grad_accum 1), the loss the mean
   cross-entropy over all response tokens of the batch;
3. writes, beside the plan:
   * ``after_3_steps.safetensors`` (``after_3_steps_swat.safetensors``, ``after_3_steps_frozen.safetensors``):
     every trainable parameter (every name in the plan's groups) after step 3, float32, under
     its Hugging Face name; frozen parameters are not stored (they equal the fixture's);
   * ``losses.json`` (``losses_swat.json``, ``losses_frozen.json``): ``{"plan": file, "losses": [3 step losses, each
     computed before that step's update], "group_lrs": [per step: {group: LR in effect}],
     "grad_norms": [pre-clip global norms], "response_tokens": n, "versions": {...}}``.

It checks as it goes that frozen tensors are bit-identical and that a group whose start step
has not come is bit-identical. Takes about 20 seconds on a 2-core CPU.

``--check-f64`` also reruns every plan in float64 (writing nothing more) and prints how far the
float32 references are from it: a measure of the tolerance a Rust float32 run can be held to.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))  # use the package from this checkout if not installed

from secure_tuning_torch import PlanStepper, load_examples, load_plan, named_plan_parameters, response_loss  # noqa: E402

ARCHS = ("llama3", "qwen2", "mistral")
PLANS = (("plan.json", ""), ("plan_swat.json", "_swat"), ("plan_frozen.json", "_frozen"))


def run(arch, plan_file, suffix, dtype=torch.float32):
    """Trains and (in float32) writes the references; returns the trained tensors."""
    fixture = os.path.join(ROOT, "tests/fixtures", arch)
    plans = os.path.join(ROOT, "tests/fixtures/plans", arch)
    plan = load_plan(os.path.join(plans, plan_file))
    examples = load_examples(os.path.join(plans, "batch.json"))
    # float64 uses SDPA: transformers 5.24's eager float64 path turns a right-padded row of the
    # sliding-window (mistral) model into NaN; float32 eager is fine and is what the files hold.
    attn = "eager" if dtype == torch.float32 else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(fixture, dtype=dtype, attn_implementation=attn)
    model.train()  # no dropout in these configs; train() for the record
    params = named_plan_parameters(model)
    start = {n: p.detach().clone() for n, p in params.items()}
    stepper = PlanStepper(model, plan)
    losses, lrs, norms = [], [], []
    tokens = None
    for s in range(plan.schedule.total_steps):
        loss, tokens = response_loss(model, examples)
        stepper.backward(loss)
        out = stepper.step()
        losses.append(out.loss)
        lrs.append(out.lrs)
        norms.append(out.grad_norm)
        for g in plan.groups:
            if g.start_step > s:
                for n in g.params:
                    assert torch.equal(params[n], start[n]), f"{arch} {plan_file}: {n} moved before its start step"
    for n in plan.frozen:
        assert torch.equal(params[n], start[n]), f"{arch} {plan_file}: frozen {n} moved"
    trained = {n: params[n].detach().float().contiguous().clone() for g in plan.groups for n in g.params}
    if dtype != torch.float32:
        return trained, losses
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    # One metadata key only: safetensors writes the metadata map in a random order, so more keys
    # would change the file's bytes on every run (the versions are in losses.json).
    save_file(trained, os.path.join(plans, f"after_3_steps{suffix}.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(plans, f"losses{suffix}.json"), "w", encoding="utf-8") as f:
        json.dump({"plan": plan_file, "losses": losses, "group_lrs": lrs, "grad_norms": norms,
                   "response_tokens": tokens, "versions": versions}, f, indent=2)
        f.write("\n")
    moved = max(float((trained[n] - start[n]).abs().max()) for n in trained)
    print(f"{arch:8} {plan_file:15} losses {', '.join(f'{x:.6f}' for x in losses)}  "
          f"max |change| {moved:.3e}  {len(trained)} tensors saved")
    return trained, losses


def main():
    check = "--check-f64" in sys.argv[1:]
    torch.manual_seed(0)
    for arch in ARCHS:
        for plan_file, suffix in PLANS:
            ref, losses = run(arch, plan_file, suffix)
            if check:
                # The same run in float64: how far float32 rounding alone moves the references,
                # i.e. the tolerance another correct float32 implementation can be held to.
                ref64, losses64 = run(arch, plan_file, suffix, dtype=torch.float64)
                diff, name = max((float((ref[n] - ref64[n]).abs().max()), n) for n in ref)
                d = torch.cat([(ref[n].double() - ref64[n]).abs().flatten() for n in ref])
                dl = max(abs(a - b) for a, b in zip(losses, losses64))
                print(f"{'':8} {'':15} float32 vs float64: max |w32 - w64| {diff:.2e} ({name}); "
                      f"elements > 1e-5: {int((d > 1e-5).sum())}, > 1e-6: {int((d > 1e-6).sum())} of {d.numel()}; "
                      f"max |loss32 - loss64| {dl:.2e}")


if __name__ == "__main__":
    main()
