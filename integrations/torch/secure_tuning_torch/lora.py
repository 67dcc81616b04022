"""LoRA from the plan's ``lora`` block, through PEFT (optional dependency: ``pip install peft``)."""

from __future__ import annotations

import torch

from .plan import Plan, PlanError


def lora_config(plan: Plan):
    """PEFT's ``LoraConfig`` for the plan: ``r``, ``lora_alpha`` (scale ``alpha / r``, no
    rsLoRA), ``target_modules``, ``lora_dropout``, ``bias="none"``, ``task_type="CAUSAL_LM"``."""
    if plan.lora is None:
        raise PlanError(f"{plan.source}: field `lora` is null: this plan trains no adapters")
    from peft import LoraConfig  # optional dependency

    lo = plan.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.lora_alpha,
        target_modules=list(lo.target_modules),
        lora_dropout=lo.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model: torch.nn.Module, plan: Plan, adapter_name: str = "default"):
    """Wraps ``model`` with PEFT LoRA adapters as the plan says and returns the PEFT model.

    The adapters are initialised by PEFT (``A`` Kaiming-uniform, ``B`` zeros) under
    ``torch.manual_seed(plan.lora.init_seed)`` inside a forked RNG, so the global RNG is left as
    it was. The seed makes the Python side reproducible; it does not reproduce the Rust tool's
    ``A`` (another RNG): for cross-language parity, load the same initial adapter weights on both
    sides. PEFT freezes the base weights; :func:`param_groups` then maps PEFT's names
    (``base_model.model.….lora_A.default.weight``) onto the plan's.
    """
    from peft import get_peft_model  # optional dependency

    cfg = lora_config(plan)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.lora.init_seed)
        return get_peft_model(model, cfg, adapter_name=adapter_name)


def peft_saved_name(plan_name: str) -> str:
    """The key PEFT's ``save_pretrained`` uses in ``adapter_model.safetensors`` for a plan
    adapter name: ``model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return "base_model.model." + plan_name
