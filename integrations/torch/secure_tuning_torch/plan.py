"""Reading and validating a ``secure-tuning`` training plan (schema v1).

A plan is the JSON file that ``secure-tuning export-plan ... --out plan.json`` writes. It names
every parameter of a Hugging Face ``*ForCausalLM`` model (``model.named_parameters()`` names)
either in one learning-rate group or in ``frozen``, and carries the optimizer, schedule,
clipping and batch settings of the Rust trainer. This module only reads and checks the file;
it needs nothing but the standard library.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

#: The ``format`` string every plan carries.
PLAN_FORMAT = "secure-tuning-plan"
#: The plan schema versions this package reads.
SUPPORTED_VERSIONS = (1,)
#: Strategy names the Rust tool writes today. ``strategy`` is informative only: another
#: non-empty string is accepted, so a new strategy does not need a new schema version.
KNOWN_STRATEGIES = ("plain", "ml-lr", "swat", "freeze-rest", "random-subset", "low-lr", "safety-mix")
#: The projection names LoRA may target (the seven projections of a Llama-family layer).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PlanError(ValueError):
    """A plan file that cannot be used: the message names the file and the offending field."""


@dataclass(frozen=True)
class ModelSpec:
    """``model``: which model the plan was made for (informative; checked against the model's
    parameter names by :func:`secure_tuning_torch.param_groups`)."""

    name_or_path: str
    model_type: str
    num_hidden_layers: int


@dataclass(frozen=True)
class OptimizerSpec:
    """``optimizer``: AdamW with decoupled weight decay applied to rank-2 tensors only."""

    type: str
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    weight_decay_applies_to: str


@dataclass(frozen=True)
class ScheduleSpec:
    """``schedule``: linear warm-up then cosine decay to ``min_lr_ratio`` (see :func:`lr_factor`)."""

    type: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float


@dataclass(frozen=True)
class LoraSpec:
    """``lora``: PEFT LoRA settings; the groups then name adapter tensors only."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    lora_dropout: float
    init_seed: int


@dataclass(frozen=True)
class GroupSpec:
    """One learning-rate group: its parameters train at ``base_lr * lr_scale * factor(step)``
    from optimizer step ``start_step`` (0-based) on, and get no update before it."""

    name: str
    lr_scale: float
    start_step: int
    params: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A validated plan. Build it with :func:`load_plan` (or :func:`plan_from_dict`)."""

    format: str
    version: int
    strategy: str
    model: ModelSpec
    base_lr: float
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    clip_grad_norm: Optional[float]
    batch_size: int
    grad_accum: int
    seed: int
    max_len: int
    loss: str
    lora: Optional[LoraSpec]
    groups: tuple[GroupSpec, ...]
    frozen: tuple[str, ...]
    #: Where the plan was read from (``"<dict>"`` when built from a dict); used in messages.
    source: str = field(default="<dict>", compare=False)

    def group(self, name: str) -> GroupSpec:
        """The group called ``name`` (``KeyError`` if there is none)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def named(self) -> dict[str, Optional[GroupSpec]]:
        """Every parameter name the plan lists, mapped to its group (``None`` for frozen)."""
        out: dict[str, Optional[GroupSpec]] = {n: g for g in self.groups for n in g.params}
        out.update({n: None for n in self.frozen})
        return out


_TOP_KEYS = (
    "format", "version", "strategy", "model", "base_lr", "optimizer", "schedule", "clip_grad_norm",
    "batch_size", "grad_accum", "seed", "max_len", "loss", "lora", "groups", "frozen",
)


class _Checker:
    """Field readers that raise :class:`PlanError` naming the file and the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, why: str) -> PlanError:
        return PlanError(f"{self.source}: field `{where}`: {why}")

    def obj(self, value: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be an object, got {_show(value)}")
        missing = [k for k in keys if k not in value]
        if missing:
            raise self.fail(where, f"is missing {', '.join('`' + k + '`' for k in missing)}")
        extra = sorted(k for k in value if k not in keys and k not in optional)
        if extra:
            known = ", ".join(keys) + (f" (optional: {', '.join(optional)})" if optional else "")
            raise self.fail(
                where,
                f"has unknown key(s) {', '.join('`' + k + '`' for k in extra)}; schema v1 has exactly {known}",
            )
        return value

    def string(self, value: Any, where: str, allowed: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {_show(value)}")
        if allowed is not None and value not in allowed:
            raise self.fail(where, f"is {value!r}; supported: {', '.join(repr(a) for a in allowed)}")
        return value

    def integer(self, value: Any, where: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer >= {minimum}, got {_show(value)}")
        if value < minimum:
            raise self.fail(where, f"must be an integer >= {minimum}, got {value}")
        return value

    def number(self, value: Any, where: str, lo: float, hi: float = math.inf, lo_open: bool = False,
               hi_open: bool = False) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if ok:
            v = float(value)
            ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            lo_s = f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi}"
            raise self.fail(where, f"must be a finite number {lo_s}{hi_s}, got {_show(value)}")
        return float(value)

    def names(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list of parameter names, got {_show(value)}")
        for i, n in enumerate(value):
            if not isinstance(n, str) or not n:
                raise self.fail(f"{where}[{i}]", f"must be a non-empty string, got {_show(n)}")
        return tuple(value)


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def plan_from_dict(data: Any, source: str = "<dict>") -> Plan:
    """Validates a decoded plan (``json.load`` output) and returns a :class:`Plan`.

    Raises :class:`PlanError` naming ``source`` and the field for: an unknown ``format`` or
    ``version``, a missing, unknown or ill-typed field, an out-of-range value, a group with
    ``lr_scale`` 0 (such parameters belong in ``frozen``), duplicate group names, and a
    parameter named more than once (in one group, two groups, or a group and ``frozen``).
    """
    c = _Checker(source)
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan must be a JSON object, got {_show(data)}")
    fmt = data.get("format")
    if fmt != PLAN_FORMAT:
        raise PlanError(
            f"{source}: field `format` is {_show(fmt)}; this package reads only format "
            f"{PLAN_FORMAT!r} (versions {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise PlanError(
            f"{source}: field `version` is {_show(version)}; this package (secure-tuning-torch) "
            f"supports {PLAN_FORMAT!r} version(s) {', '.join(map(str, SUPPORTED_VERSIONS))} only"
        )
    # `source_plan` is the Rust library's own copy of the plan; this package does not need it.
    c.obj(data, "<plan>", _TOP_KEYS, optional=("source_plan",))

    m = c.obj(data["model"], "model", ("name_or_path", "model_type", "num_hidden_layers"))
    model = ModelSpec(
        name_or_path=c.string(m["name_or_path"], "model.name_or_path"),
        model_type=c.string(m["model_type"], "model.model_type"),
        num_hidden_layers=c.integer(m["num_hidden_layers"], "model.num_hidden_layers", 1),
    )

    o = c.obj(data["optimizer"], "optimizer", ("type", "betas", "eps", "weight_decay", "weight_decay_applies_to"))
    betas = o["betas"]
    if not isinstance(betas, list) or len(betas) != 2:
        raise c.fail("optimizer.betas", f"must be a list of two numbers, got {_show(betas)}")
    optimizer = OptimizerSpec(
        type=c.string(o["type"], "optimizer.type", ("adamw",)),
        betas=(
            c.number(betas[0], "optimizer.betas[0]", 0.0, 1.0, hi_open=True),
            c.number(betas[1], "optimizer.betas[1]", 0.0, 1.0, hi_open=True),
        ),
        eps=c.number(o["eps"], "optimizer.eps", 0.0, lo_open=True),
        weight_decay=c.number(o["weight_decay"], "optimizer.weight_decay", 0.0),
        weight_decay_applies_to=c.string(
            o["weight_decay_applies_to"], "optimizer.weight_decay_applies_to", ("rank-2",)
        ),
    )

    s = c.obj(data["schedule"], "schedule", ("type", "warmup_steps", "total_steps", "min_lr_ratio"))
    schedule = ScheduleSpec(
        type=c.string(s["type"], "schedule.type", ("linear-warmup-cosine",)),
        warmup_steps=c.integer(s["warmup_steps"], "schedule.warmup_steps", 0),
        total_steps=c.integer(s["total_steps"], "schedule.total_steps", 1),
        min_lr_ratio=c.number(s["min_lr_ratio"], "schedule.min_lr_ratio", 0.0, 1.0),
    )

    clip = data["clip_grad_norm"]
    clip_grad_norm = None if clip is None else c.number(clip, "clip_grad_norm", 0.0, lo_open=True)

    lora = None
    if data["lora"] is not None:
        lo = c.obj(data["lora"], "lora", ("r", "lora_alpha", "target_modules", "lora_dropout", "init_seed"))
        targets = lo["target_modules"]
        if not isinstance(targets, list) or not targets:
            raise c.fail("lora.target_modules", f"must be a non-empty list, got {_show(targets)}")
        for i, t in enumerate(targets):
            c.string(t, f"lora.target_modules[{i}]", LORA_TARGETS)
        if len(set(targets)) != len(targets):
            raise c.fail("lora.target_modules", "names a module kind twice")
        lora = LoraSpec(
            r=c.integer(lo["r"], "lora.r", 1),
            lora_alpha=c.number(lo["lora_alpha"], "lora.lora_alpha", 0.0, lo_open=True),
            target_modules=tuple(targets),
            lora_dropout=c.number(lo["lora_dropout"], "lora.lora_dropout", 0.0, 1.0, hi_open=True),
            init_seed=c.integer(lo["init_seed"], "lora.init_seed", 0),
        )

    raw_groups = data["groups"]
    if not isinstance(raw_groups, list):
        raise c.fail("groups", f"must be a list, got {_show(raw_groups)}")
    groups = []
    seen: dict[str, str] = {}
    for i, g in enumerate(raw_groups):
        where = f"groups[{i}]"
        c.obj(g, where, ("name", "lr_scale", "start_step", "params"))
        name = c.string(g["name"], f"{where}.name")
        if any(x.name == name for x in groups):
            raise c.fail(f"{where}.name", f"{name!r} is used by two groups")
        scale = g["lr_scale"]
        if scale == 0 and not isinstance(scale, bool):
            raise c.fail(f"{where}.lr_scale", f"group {name!r} has lr_scale 0: list its parameters in `frozen` instead")
        group = GroupSpec(
            name=name,
            lr_scale=c.number(scale, f"{where}.lr_scale", 0.0, lo_open=True),
            start_step=c.integer(g["start_step"], f"{where}.start_step", 0),
            params=c.names(g["params"], f"{where}.params"),
        )
        for n in group.params:
            if n in seen:
                raise c.fail(f"{where}.params", f"`{n}` is already listed in {seen[n]}")
            seen[n] = f"group {name!r}"
        groups.append(group)
    frozen = c.names(data["frozen"], "frozen")
    for n in frozen:
        if n in seen:
            raise c.fail("frozen", f"`{n}` is already listed in {seen[n]}")
        seen[n] = "`frozen`"
    if not groups:
        raise c.fail("groups", "is empty: the plan trains nothing")

    strategy = c.string(data["strategy"], "strategy")
    return Plan(
        format=fmt,
        version=version,
        strategy=strategy,
        model=model,
        base_lr=c.number(data["base_lr"], "base_lr", 0.0, lo_open=True),
        optimizer=optimizer,
        schedule=schedule,
        clip_grad_norm=clip_grad_norm,
        batch_size=c.integer(data["batch_size"], "batch_size", 1),
        grad_accum=c.integer(data["grad_accum"], "grad_accum", 1),
        seed=c.integer(data["seed"], "seed", 0),
        max_len=c.integer(data["max_len"], "max_len", 1),
        loss=c.string(data["loss"], "loss", ("mean-over-response-tokens",)),
        lora=lora,
        groups=tuple(groups),
        frozen=frozen,
        source=source,
    )


def load_plan(path: str | os.PathLike) -> Plan:
    """Reads and validates the plan file at ``path``.

    >>> plan = load_plan("tests/fixtures/plans/llama3/plan.json")   # doctest: +SKIP
    >>> sorted((g.name, g.lr_scale, g.start_step) for g in plan.groups)   # doctest: +SKIP
    [('non-module', 0.1, 0), ('rest', 0.1, 0), ('robust', 1.0, 0)]

    Raises :class:`PlanError` (a ``ValueError``) naming the file and the field on any problem,
    including a file that is not JSON, an unknown ``format`` and a ``version`` other than 1.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise PlanError(f"{source}: not valid JSON ({e})") from e
    return plan_from_dict(data, source=source)
