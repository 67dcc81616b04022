#!/usr/bin/env python3
"""A plain training loop under Hugging Face Accelerate, driven by a plan (SWAT fixture plan).

From the repository root:

    .venv-torch/bin/python integrations/torch/examples/accelerate_plan.py          # one process
    # 2 CPU processes: Accelerate picks up torchrun's environment (DistributedType.MULTI_CPU, gloo).
    # (`accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.16, and
    # `--cpu` cannot be combined with `--multi_gpu`.)
    .venv-torch/bin/torchrun --standalone --nproc_per_node 2 integrations/torch/examples/accelerate_plan.py
    # N GPUs on one node:
    accelerate launch --multi_gpu --num_processes N integrations/torch/examples/accelerate_plan.py

Each process takes its share of the fixture batch (4 examples, 2 per process with 2 processes).
The fixture's two halves have 11 and 10 response tokens, so with 2 processes the DDP-averaged
gradient is not exactly the one-process gradient (see ddp_plan.py for a run where it is).
Note: the scheduler is NOT passed to ``accelerator.prepare``: a prepared scheduler steps once
per process per optimizer step (Accelerate's default for ``split_batches=False``), which would
run the plan's schedule N times too fast with N processes.
"""
import os
import sys

import torch
import transformers
from accelerate import Accelerator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # this checkout
from secure_tuning_torch import (  # noqa: E402
    PlanStepper, collate, load_examples, load_plan, make_optimizer, make_scheduler, response_loss)

plan = load_plan("tests/fixtures/plans/llama3/plan_swat.json")
examples = load_examples("tests/fixtures/plans/llama3/batch.json")
transformers.logging.set_verbosity_error()
model = transformers.AutoModelForCausalLM.from_pretrained(plan.model.name_or_path, dtype=torch.float32)

acc = Accelerator(cpu=not torch.cuda.is_available())
opt = make_optimizer(model, plan)                 # param groups from the bare model
model, opt = acc.prepare(model, opt)              # DDP-wraps the model when there are several processes
stepper = PlanStepper(model, plan, optimizer=opt, scheduler=make_scheduler(opt, plan),
                      backward_fn=acc.backward, clip_fn=lambda params, max_norm: acc.clip_grad_norm_(params, max_norm))
mine = examples[acc.process_index::acc.num_processes]  # this process's share of every batch
for step in range(plan.schedule.total_steps):
    loss, _ = response_loss(model, collate(mine, device=acc.device))
    stepper.backward(loss)
    out = stepper.step()
    acc.print(f"[{acc.num_processes} process(es), {acc.distributed_type}] step {step + 1}: "
              f"loss {out.loss:.4f} (process 0), grad-norm {out.grad_norm:.4f}, lr {out.lrs}")
