"""secure-tuning-torch: run ``secure-tuning`` training plans (ML-LR, SWAT, ...) with PyTorch.

A plan (``secure-tuning export-plan ... --out plan.json``) names every parameter of a Hugging
Face ``*ForCausalLM`` in a learning-rate group or as frozen, with the optimizer, schedule and
clipping of the Rust trainer. This package turns it into torch objects that train the same way:

* :func:`load_plan` -- read and validate a plan file (schema v1).
* :func:`param_groups`, :func:`make_optimizer` -- AdamW param groups (per-group LR, weight decay
  on rank-2 tensors only, frozen parameters get ``requires_grad=False``).
* :func:`make_scheduler`, :func:`lr_factor` -- the warm-up + cosine schedule as ``LambdaLR``.
* :class:`PlanStepper`, :func:`drop_unstarted_grads` -- a plain / Accelerate / DDP loop's step
  (clip, drop unstarted groups' gradients, AdamW, LR).
* :class:`PlanCallback`, :class:`PlanTrainer`, :func:`trainer_arguments` -- the same inside
  ``transformers.Trainer``
  (imported lazily: the package itself needs only torch).
* :func:`apply_lora` -- PEFT LoRA adapters from the plan (needs ``peft``).
* :func:`collate`, :func:`response_loss` -- right-padded batches and the response-token loss.
"""

from .data import Example, collate, load_examples, response_loss
from .lora import apply_lora, lora_config, peft_saved_name
from .optim import (
    NonFiniteLossError,
    PlanMismatchError,
    PlanStepper,
    StepResult,
    drop_unstarted_grads,
    group_lrs,
    lr_factor,
    make_optimizer,
    make_scheduler,
    named_plan_parameters,
    normalize_name,
    param_groups,
)
from .plan import (
    GroupSpec,
    LoraSpec,
    ModelSpec,
    OptimizerSpec,
    Plan,
    PlanError,
    ScheduleSpec,
    load_plan,
    plan_from_dict,
)

__version__ = "0.1.0"

_HF = ("PlanCallback", "PlanTrainer", "trainer_arguments")


def __getattr__(name):
    # transformers is optional: import it only when the Trainer helpers are asked for.
    if name in _HF:
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'secure_tuning_torch' has no attribute {name!r}")


__all__ = [
    "Example", "GroupSpec", "LoraSpec", "ModelSpec", "NonFiniteLossError", "OptimizerSpec", "Plan",
    "PlanCallback", "PlanError", "PlanTrainer", "PlanMismatchError", "PlanStepper", "ScheduleSpec", "StepResult",
    "apply_lora", "collate", "drop_unstarted_grads", "group_lrs", "load_examples", "load_plan",
    "lora_config", "lr_factor", "make_optimizer", "make_scheduler", "named_plan_parameters",
    "normalize_name", "param_groups", "peft_saved_name", "plan_from_dict", "response_loss",
    "trainer_arguments",
]
