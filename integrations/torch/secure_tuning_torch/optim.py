"""Optimizer, schedule and step driver that reproduce the Rust trainer's semantics in PyTorch.

The rules (all from the plan):

* LR of a parameter in group ``g`` at 0-based optimizer step ``s``:
  ``base_lr * g.lr_scale * lr_factor(plan, s)`` -- a ``LambdaLR`` over param groups whose
  initial LR is ``base_lr * lr_scale``, stepped once after every optimizer step.
* AdamW (decoupled decay ``w *= 1 - lr * wd``, bias-corrected moments) with weight decay on
  rank-2 tensors only: one torch param group per (plan group, decays?) pair.
* Adam step counts are per parameter: a parameter whose group has not started has
  ``grad is None`` at ``optimizer.step()``, so torch skips it and creates no state for it.
* Order in a step: backward on every micro-batch (each loss times ``1 / grad_accum``), global
  gradient clipping over every trainable parameter (unstarted groups included), then the
  unstarted groups' gradients are dropped, then ``optimizer.step()``, ``scheduler.step()``,
  ``zero_grad``. :class:`PlanStepper` does exactly this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from .plan import Plan, PlanError, ScheduleSpec

#: Keys this package adds to each torch param group (besides torch's own ``lr``,
#: ``weight_decay`` and the optional ``param_names``).
GROUP_KEYS = ("plan_group", "lr_scale", "start_step")


class PlanMismatchError(PlanError):
    """The model's parameters and the plan's names differ (the message lists every offender)."""


class NonFiniteLossError(FloatingPointError):
    """A step's loss was NaN or infinite; no weight or optimizer state was changed."""


_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def normalize_name(name: str, adapter_name: str = "default") -> str:
    """Maps a live parameter name onto the plan's naming.

    Plain transformers names are returned unchanged. PEFT names are normalised the way the
    plan names adapters: the ``base_model.model.`` prefix is removed, the adapter-name segment
    after ``lora_A`` / ``lora_B`` (``.default``) is removed, and the ``.base_layer`` segment
    that PEFT inserts into a wrapped projection's own weight is removed, so the frozen base
    weights keep their transformers names::

        base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            -> model.layers.0.self_attn.q_proj.lora_A.weight
        base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight
            -> model.layers.0.self_attn.q_proj.weight

    Wrapper segments that FSDP (``_fsdp_wrapped_module``), activation checkpointing
    (``_checkpoint_wrapped_module``) and ``torch.compile`` (``_orig_mod``) insert are removed
    too, so the names of a wrapped model match the plan.
    """
    parts = [x for x in name.split(".") if x not in _WRAPPER_SEGMENTS]
    if parts[:2] == ["base_model", "model"]:
        parts = parts[2:]
    out = []
    for i, part in enumerate(parts):
        if part == "base_layer":
            continue
        if part == adapter_name and i > 0 and parts[i - 1].startswith("lora_"):
            continue
        out.append(part)
    return ".".join(out)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def named_plan_parameters(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.nn.Parameter]:
    """``model.named_parameters()`` keyed by plan names (see :func:`normalize_name`); a tied
    parameter appears once, under its first name, as ``named_parameters`` lists it."""
    out: dict[str, torch.nn.Parameter] = {}
    for live, p in _unwrap(model).named_parameters():
        name = normalize_name(live, adapter_name)
        if name in out:
            raise PlanError(f"two model parameters normalise to the same plan name `{name}` (one is `{live}`)")
        out[name] = p
    return out


def _mismatch_message(plan: Plan, unnamed: list[str], absent: list[str]) -> str:
    lines = [f"{plan.source}: the plan does not match the model's parameters."]
    if unnamed:
        lines.append(f"{len(unnamed)} model parameter(s) the plan does not name (neither in a group nor in `frozen`):")
        lines += [f"  {n}" for n in unnamed]
    if absent:
        lines.append(f"{len(absent)} plan name(s) the model lacks:")
        lines += [f"  {n}" for n in absent]
    lora_in_model = any(".lora_" in n for n in unnamed)
    if plan.lora is not None and any(".lora_" in n for n in absent) and not lora_in_model:
        lines.append("The plan has LoRA adapters: call apply_lora(model, plan) before building the optimizer.")
    if plan.lora is None and lora_in_model:
        lines.append("The model has LoRA adapters but the plan has `lora: null`.")
    return "\n".join(lines)


def param_groups(model: torch.nn.Module, plan: Plan, adapter_name: str = "default") -> list[dict]:
    """Torch param groups for ``torch.optim.AdamW(groups, lr=..., betas=..., eps=...)``.

    Every model parameter must be named by the plan exactly once (after
    :func:`normalize_name`), and every plan name must be a model parameter; otherwise one
    :class:`PlanMismatchError` lists every model parameter the plan does not name and every
    plan name the model lacks. Frozen parameters get ``requires_grad=False``; group
    parameters get ``requires_grad=True``.

    Each plan group gives up to two torch groups, in plan order: its rank-2 tensors with
    ``weight_decay = plan.optimizer.weight_decay`` and its other tensors with 0. Each torch
    group carries ``lr = base_lr * lr_scale``, ``param_names`` (plan names), and the keys
    ``plan_group``, ``lr_scale`` and ``start_step`` that :func:`drop_unstarted_grads` and the
    Trainer callback read. Tensors keep the plan's order within a group.
    """
    live = named_plan_parameters(model, adapter_name)
    named = plan.named
    unnamed = [n for n in live if n not in named]
    absent = [n for n in named if n not in live]
    if unnamed or absent:
        raise PlanMismatchError(_mismatch_message(plan, unnamed, absent))
    for n in plan.frozen:
        live[n].requires_grad_(False)
    groups: list[dict] = []
    for g in plan.groups:
        decay = [n for n in g.params if live[n].ndim == 2]
        other = [n for n in g.params if live[n].ndim != 2]
        for names, wd in ((decay, plan.optimizer.weight_decay), (other, 0.0)):
            if not names:
                continue
            for n in names:
                live[n].requires_grad_(True)
            groups.append({
                "params": [live[n] for n in names],
                "param_names": list(names),
                "lr": plan.base_lr * g.lr_scale,
                "weight_decay": wd,
                "plan_group": g.name,
                "lr_scale": g.lr_scale,
                "start_step": g.start_step,
            })
    return groups


def make_optimizer(
    model: torch.nn.Module, plan: Plan, adapter_name: str = "default", **adamw_kwargs
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups` with the plan's betas and eps.

    Extra keyword arguments (``foreach``, ``fused``...) go to ``AdamW``; they do not change
    the result beyond float rounding.
    """
    o = plan.optimizer
    return torch.optim.AdamW(
        param_groups(model, plan, adapter_name),
        lr=plan.base_lr,
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
        **adamw_kwargs,
    )


def lr_factor(plan: Plan | ScheduleSpec, step: int) -> float:
    """Multiplier of ``base_lr * lr_scale`` at 0-based optimizer step ``step``.

    With ``W = warmup_steps``, ``T = total_steps``, ``m = min_lr_ratio``: for ``step < W``,
    ``(step + 1) / W``; after it, ``decay = max(T - W, 1)``,
    ``progress = min((step - W) / max(decay - 1, 1), 1)`` and the factor is
    ``m + (1 - m) * 0.5 * (1 + cos(pi * progress))`` (so the last step, ``T - 1``, is at ``m``).
    """
    s = plan.schedule if isinstance(plan, Plan) else plan
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    w, t, m = s.warmup_steps, s.total_steps, s.min_lr_ratio
    if step < w:
        return (step + 1) / w
    decay = max(t - w, 1)
    progress = min((step - w) / max(decay - 1, 1), 1.0)
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _PlanFactor:
    """The LambdaLR multiplier (a class, not a lambda, so the scheduler's state_dict keeps it)."""

    def __init__(self, schedule: ScheduleSpec):
        self.schedule = schedule

    def __call__(self, step: int) -> float:
        return lr_factor(self.schedule, step)


def make_scheduler(optimizer: torch.optim.Optimizer, plan: Plan) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` giving every group ``initial_lr * lr_factor(plan, s)`` at step ``s``.

    Build it right after the optimizer (before any step) and call ``step()`` once after every
    optimizer step; the LR in effect at 0-based step ``s`` is then ``base_lr * lr_scale *
    lr_factor(plan, s)``.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _PlanFactor(plan.schedule))


def _plan_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    groups = optimizer.param_groups
    if not any("plan_group" in g for g in groups):
        raise PlanError(
            "this optimizer was not built by secure_tuning_torch (its param groups have no `plan_group`/"
            "`start_step`): build it with make_optimizer(model, plan) or param_groups(model, plan)"
        )
    return groups


def drop_unstarted_grads(optimizer: torch.optim.Optimizer, step: int) -> int:
    """Sets ``p.grad = None`` for every parameter of a group with ``start_step > step``.

    Call it after clipping and before ``optimizer.step()`` at 0-based step ``step``: those
    parameters then get no update (weight decay included) and no optimizer state, so their
    Adam step count starts at their own first update. Returns how many tensors it dropped.
    """
    dropped = 0
    for g in _plan_groups(optimizer):
        if g.get("start_step", 0) > step:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad = None
                    dropped += 1
    return dropped


def group_lrs(optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
    """The LR in effect for each plan group at 0-based step ``step`` (read before
    ``optimizer.step()``): the scheduler's LR, or 0.0 for a group that has not started."""
    out: dict[str, float] = {}
    for g in _plan_groups(optimizer):
        name = g.get("plan_group", "?")
        out[name] = float(g["lr"]) if g.get("start_step", 0) <= step else 0.0
    return out


@dataclass
class StepResult:
    """What one :meth:`PlanStepper.step` did."""

    #: 0-based index of the step just taken.
    step: int
    #: Mean of the micro-batch losses passed to :meth:`PlanStepper.backward` (None if none were).
    loss: Optional[float]
    #: Global gradient norm before clipping (None when the plan has no clipping).
    grad_norm: Optional[float]
    #: LR in effect per plan group at this step (0.0 for groups not started yet).
    lrs: dict[str, float]


class PlanStepper:
    """Drives a plain training loop (or an Accelerate / DDP one) by the plan's rules.

    ::

        stepper = PlanStepper(model, plan)
        for step in range(plan.schedule.total_steps):
            for micro in micro_batches(step):          # plan.grad_accum of them
                loss, _ = response_loss(model, micro)
                stepper.backward(loss)                  # (loss / grad_accum).backward()
            stepper.step()                              # clip, drop unstarted, AdamW, LR

    ``optimizer`` / ``scheduler`` default to :func:`make_optimizer` / :func:`make_scheduler`;
    pass prepared ones (e.g. from ``accelerator.prepare``) to use those. ``backward_fn``
    replaces ``tensor.backward()`` (e.g. ``accelerator.backward``); ``clip_fn(params,
    max_norm)`` replaces ``torch.nn.utils.clip_grad_norm_`` (e.g. ``lambda ps, m:
    accelerator.clip_grad_norm_(model.parameters(), m)``) and must return the pre-clip norm.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        plan: Plan,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler=None,
        clip_fn: Optional[Callable[[Iterable[torch.Tensor], float], torch.Tensor]] = None,
        backward_fn: Optional[Callable[[torch.Tensor], None]] = None,
        adapter_name: str = "default",
    ):
        self.model = model
        self.plan = plan
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, plan, adapter_name)
        _plan_groups(self.optimizer)
        self.scheduler = scheduler if scheduler is not None else make_scheduler(self.optimizer, plan)
        self.clip_fn = clip_fn or torch.nn.utils.clip_grad_norm_
        self.backward_fn = backward_fn or (lambda t: t.backward())
        #: 0-based index of the next optimizer step.
        self.step_index = 0
        self._losses: list[torch.Tensor] = []

    def trainable_parameters(self) -> list[torch.Tensor]:
        """Every parameter the optimizer holds (unstarted groups included)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss times ``1 / grad_accum`` (gradients add up)."""
        self._losses.append(loss.detach())
        self.backward_fn(loss / self.plan.grad_accum)

    def step(self, loss: Optional[float] = None) -> StepResult:
        """Finishes step ``step_index``: clip, drop unstarted groups' grads, AdamW, LR schedule.

        ``loss`` defaults to the mean of the losses given to :meth:`backward` since the last
        step. A non-finite loss raises :class:`NonFiniteLossError` before anything changes
        (the gradients are cleared), as the Rust trainer stops on one.
        """
        if loss is None and self._losses:
            loss = float(torch.stack([x.float() for x in self._losses]).mean())
        self._losses = []
        s = self.step_index
        if loss is not None and not math.isfinite(float(loss)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss {loss} at step {s + 1}: no update was applied")
        norm = None
        if self.plan.clip_grad_norm is not None:
            norm = float(self.clip_fn(self.trainable_parameters(), self.plan.clip_grad_norm))
        lrs = group_lrs(self.optimizer, s)
        drop_unstarted_grads(self.optimizer, s)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_index += 1
        return StepResult(step=s, loss=None if loss is None else float(loss), grad_norm=norm, lrs=lrs)
