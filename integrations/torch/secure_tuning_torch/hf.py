"""Hugging Face ``Trainer`` support (needs ``transformers``; imported only when used).

Hook order of ``Trainer``'s optimizer step (transformers 5.24.0, ``Trainer._inner_training_loop``)::

    for each micro-batch: training_step (forward, backward)
    _clip_grad_norm(model)             # accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    callback: on_pre_optimizer_step    # <- PlanCallback drops the unstarted groups' grads here
    optimizer.step()
    callback: on_optimizer_step
    lr_scheduler.step()
    model.zero_grad()
    state.global_step += 1
    callback: on_step_end

So the Trainer's own clipping already covers every parameter that has a gradient, unstarted
groups included (their parameters have ``requires_grad=True``), which is the plan's rule; the
callback only has to set ``p.grad = None`` for the groups with ``start_step > global_step``
between clipping and ``optimizer.step()``, and ``on_pre_optimizer_step`` is exactly there.
``state.global_step`` is still the 0-based index of the step being taken at that point.
"""

from __future__ import annotations

import os
import warnings

from transformers import Trainer, TrainerCallback

from .optim import _plan_groups, drop_unstarted_grads, group_lrs, make_optimizer, make_scheduler
from .plan import Plan, PlanError


class PlanCallback(TrainerCallback):
    """Applies the plan's start steps (SWAT) inside ``transformers.Trainer``.

    Use with the plan's optimizer and scheduler::

        opt = make_optimizer(model, plan)
        trainer = Trainer(model=model, args=trainer_arguments(plan, "out"), train_dataset=ds,
                          data_collator=..., optimizers=(opt, make_scheduler(opt, plan)),
                          callbacks=[PlanCallback(plan)])

    At ``on_train_begin`` it checks that ``args.max_grad_norm`` is the plan's clip (0 for none)
    and ``args.gradient_accumulation_steps`` its ``grad_accum`` (``ValueError`` if not; pass
    ``strict=False`` to only warn), warns when ``max_steps`` differs from ``total_steps``, and
    refuses DeepSpeed when a group starts late (DeepSpeed keeps gradients in its own buffers
    and clips and steps inside ``backward``, so there is no point where dropping ``p.grad``
    would work). At ``on_pre_optimizer_step`` (after clipping, before ``optimizer.step()``)
    it drops the gradients of groups with ``start_step > state.global_step``.

    ``history`` holds, per step, ``(step, {plan group: LR in effect})``.
    """

    def __init__(self, plan: Plan, strict: bool = True):
        self.plan = plan
        self.strict = strict
        self.history: list[tuple[int, dict[str, float]]] = []

    def _complain(self, msg: str):
        if self.strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)

    def on_train_begin(self, args, state, control, **kwargs):
        plan = self.plan
        want_clip = plan.clip_grad_norm or 0.0
        if abs(float(args.max_grad_norm or 0.0) - want_clip) > 1e-12:
            self._complain(
                f"TrainingArguments.max_grad_norm is {args.max_grad_norm} but {plan.source} clips at "
                f"{plan.clip_grad_norm} (use {want_clip})"
            )
        if args.gradient_accumulation_steps != plan.grad_accum:
            self._complain(
                f"TrainingArguments.gradient_accumulation_steps is {args.gradient_accumulation_steps} but "
                f"{plan.source} has grad_accum {plan.grad_accum}"
            )
        if args.max_steps != plan.schedule.total_steps:
            warnings.warn(
                f"TrainingArguments.max_steps is {args.max_steps}; {plan.source} schedules "
                f"{plan.schedule.total_steps} steps (the LR schedule follows the plan)",
                stacklevel=2,
            )
        late = [g.name for g in plan.groups if g.start_step > 0]
        deepspeed = (
            getattr(args, "deepspeed", None)
            or getattr(args, "deepspeed_plugin", None)
            or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        )
        if late and deepspeed:
            raise NotImplementedError(
                f"groups {late} start late, which PlanCallback cannot do under DeepSpeed "
                "(see SCALE_NOTES.md: run the phases as two launches, or use DDP/FSDP)"
            )
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            _plan_groups(optimizer)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            raise PlanError("PlanCallback got no optimizer from the Trainer")
        step = state.global_step
        self.history.append((step, group_lrs(optimizer, step)))
        drop_unstarted_grads(optimizer, step)


class PlanTrainer(Trainer):
    """``transformers.Trainer`` whose optimizer and LR schedule come from the plan.

    ``PlanTrainer(model=..., args=trainer_arguments(plan, "out"), plan=plan, train_dataset=...,
    data_collator=...)``. It builds :func:`make_optimizer` / :func:`make_scheduler` in
    ``create_optimizer`` / ``create_scheduler`` (so, under FSDP, after Accelerate has wrapped the
    model, where ``Trainer(optimizers=...)`` is refused) and adds a :class:`PlanCallback` unless
    one is given. Passing ``optimizers=`` as well is not supported.
    """

    def __init__(self, *args, plan, **kwargs):
        if kwargs.get("optimizers") not in (None, (None, None)):
            raise ValueError("PlanTrainer builds the optimizer and scheduler from the plan: do not pass optimizers=")
        self.plan = plan
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, PlanCallback) for c in callbacks):
            callbacks.append(PlanCallback(plan))
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = make_optimizer(model if model is not None else self.model, self.plan)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = make_scheduler(optimizer if optimizer is not None else self.optimizer, self.plan)
        return self.lr_scheduler


def trainer_arguments(plan: Plan, output_dir: str, world_size: int = 1, **overrides):
    """``transformers.TrainingArguments`` carrying the plan's step count, batch, accumulation,
    clip and seed. ``per_device_train_batch_size = batch_size / world_size`` (it must divide).
    ``learning_rate`` is set to ``base_lr`` for logging only: the LRs come from the plan's
    optimizer and scheduler, passed as ``Trainer(optimizers=(...))``. ``overrides`` win.
    """
    from transformers import TrainingArguments

    if plan.batch_size % world_size:
        raise ValueError(f"batch_size {plan.batch_size} is not divisible by world_size {world_size}")
    kwargs = dict(
        output_dir=output_dir,
        max_steps=plan.schedule.total_steps,
        per_device_train_batch_size=plan.batch_size // world_size,
        gradient_accumulation_steps=plan.grad_accum,
        max_grad_norm=plan.clip_grad_norm or 0.0,
        learning_rate=plan.base_lr,
        seed=plan.seed,
        remove_unused_columns=False,
        report_to=[],
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)
