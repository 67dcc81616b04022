"""Param groups, schedule, clipping, SWAT start steps, frozen and weight-decay rules (torch only)."""

import math

import pytest
import torch
from conftest import TINY_NAMES, Tiny, tiny_loss, tiny_plan_dict

from secure_tuning_torch import (
    NonFiniteLossError,
    PlanError,
    PlanMismatchError,
    PlanStepper,
    drop_unstarted_grads,
    lr_factor,
    make_optimizer,
    make_scheduler,
    normalize_name,
    param_groups,
    peft_saved_name,
    plan_from_dict,
)


def plan(**changes):
    return plan_from_dict(tiny_plan_dict(**changes), "tiny-plan.json")


def formula(w, t, m, s):
    if s < w:
        return (s + 1) / w
    decay = max(t - w, 1)
    progress = min((s - w) / max(decay - 1, 1), 1.0)
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))


def test_lr_factor_values():
    p = plan(**{"schedule": {"type": "linear-warmup-cosine", "warmup_steps": 8, "total_steps": 150, "min_lr_ratio": 0.1}})
    assert lr_factor(p, 0) == pytest.approx(1 / 8)
    assert lr_factor(p, 3) == pytest.approx(4 / 8)
    assert lr_factor(p, 7) == pytest.approx(1.0)
    assert lr_factor(p, 8) == pytest.approx(1.0)          # decay starts at the peak
    assert lr_factor(p, 149) == pytest.approx(0.1)        # last step at the floor
    assert lr_factor(p, 500) == pytest.approx(0.1)        # past the end: stays at the floor
    mid = 8 + (142 - 1) / 2                               # progress 0.5 -> halfway
    assert lr_factor(p, int(mid)) == pytest.approx(formula(8, 150, 0.1, int(mid)))
    assert formula(8, 150, 0.1, 8 + 70.5) == pytest.approx(0.55)
    # No warm-up, and degenerate lengths (decay of 1 or 2 steps) as the Rust schedule.
    p0 = plan(**{"schedule.warmup_steps": 0, "schedule.total_steps": 1})
    assert lr_factor(p0, 0) == pytest.approx(1.0)
    p2 = plan(**{"schedule.warmup_steps": 1, "schedule.total_steps": 3})
    assert [lr_factor(p2, s) for s in range(3)] == pytest.approx([1.0, 1.0, 0.1])
    for s in range(200):
        assert lr_factor(p, s) == pytest.approx(formula(8, 150, 0.1, s), abs=1e-15)


def test_scheduler_lrs_follow_formula(tiny):
    p = plan(**{"schedule.warmup_steps": 3, "schedule.total_steps": 9, "schedule.min_lr_ratio": 0.2})
    opt = make_optimizer(tiny, p)
    sched = make_scheduler(opt, p)
    for s in range(12):
        want = formula(3, 9, 0.2, s)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(0.01 * g["lr_scale"] * want, rel=1e-12), (s, g["plan_group"])
        tiny_loss(tiny).backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_groups_cover_every_parameter_and_split_by_rank(tiny):
    p = plan()
    groups = param_groups(tiny, p)
    named = [n for g in groups for n in g["param_names"]]
    assert sorted(named + list(p.frozen)) == sorted(TINY_NAMES)
    by_name = {n: g for g in groups for n in g["param_names"]}
    for n, prm in tiny.named_parameters():
        if n in p.frozen:
            assert not prm.requires_grad
            continue
        g = by_name[n]
        assert g["weight_decay"] == (0.1 if prm.ndim == 2 else 0.0), n
        assert g["lr"] == pytest.approx(0.01 * p.named[n].lr_scale)
    # robust: a.weight (decay) and a.bias (no decay) -> two torch groups, in plan order.
    assert [(g["plan_group"], g["param_names"]) for g in groups] == [
        ("robust", ["a.weight"]), ("robust", ["a.bias"]),
        ("rest", ["b.weight", "head.weight"]), ("rest", ["norm.weight"]),
    ]


def test_mismatch_lists_every_offender(tiny):
    d = tiny_plan_dict(**{
        "groups.0.params": ["a.weight", "a.bias", "ghost.weight"],
        "groups.1.params": ["b.weight", "phantom.bias"],
    })
    with pytest.raises(PlanMismatchError) as e:
        param_groups(tiny, plan_from_dict(d, "mismatch.json"))
    msg = str(e.value)
    assert msg.startswith("mismatch.json:")
    for n in ["norm.weight", "head.weight", "ghost.weight", "phantom.bias"]:
        assert f"  {n}" in msg, msg
    assert "2 model parameter(s) the plan does not name" in msg and "2 plan name(s) the model lacks" in msg


def frozen_and_moving(p, steps, model=None):
    model = model or Tiny()
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    stepper = PlanStepper(model, p)
    snapshots = []
    for s in range(steps):
        stepper.backward(tiny_loss(model, seed=s))
        stepper.step()
        snapshots.append({n: q.detach().clone() for n, q in model.named_parameters()})
    return model, stepper, before, snapshots


def test_frozen_never_change():
    p = plan()
    model, _, before, snaps = frozen_and_moving(p, 4)
    for snap in snaps:
        assert torch.equal(snap["embed.weight"], before["embed.weight"])
    assert model.embed.weight.grad is None and not model.embed.weight.requires_grad
    assert not torch.equal(snaps[-1]["a.weight"], before["a.weight"])


def test_swat_late_group_bit_identical_until_its_start():
    p = plan(**{"groups.1.start_step": 2})
    model, stepper, before, snaps = frozen_and_moving(p, 4)
    late = ["b.weight", "norm.weight", "head.weight"]
    for s, snap in enumerate(snaps):  # snap = weights after step s (0-based)
        for n in late:
            if s < 2:
                assert torch.equal(snap[n], before[n]), (s, n)
            else:
                assert not torch.equal(snap[n], before[n]), (s, n)
        assert not torch.equal(snap["a.weight"], before["a.weight"])
    # Per-parameter Adam step counts: robust has 4 updates, the late group 2.
    state = stepper.optimizer.state
    assert int(state[model.a.weight]["step"]) == 4
    assert int(state[model.b.weight]["step"]) == 2 and int(state[model.norm.weight]["step"]) == 2


def test_swat_late_group_has_no_optimizer_state_before_start():
    p = plan(**{"groups.1.start_step": 5})
    model, stepper, _, _ = frozen_and_moving(p, 2)
    assert model.b.weight not in stepper.optimizer.state
    assert model.a.weight in stepper.optimizer.state


def test_clipping_includes_unstarted_groups():
    p = plan(**{"groups.1.start_step": 3, "clip_grad_norm": 1e-3})
    model = Tiny()
    seen = {}

    def clip(params, max_norm):
        params = list(params)
        seen["n"] = sum(1 for q in params if q.grad is not None)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    stepper = PlanStepper(model, p, clip_fn=clip)
    stepper.backward(tiny_loss(model))
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    out = stepper.step()
    assert seen["n"] == 5  # every trainable tensor, the 3 unstarted ones included
    assert out.grad_norm == pytest.approx(float(norm), rel=1e-5)
    assert out.lrs == {"robust": pytest.approx(0.005), "rest": 0.0}


def reference_run(p, steps, model):
    """The Rust trainer's step written out by hand (TrainStep::step_here + AdamW::step)."""
    params = dict(model.named_parameters())
    scale = {n: g.lr_scale for g in p.groups for n in g.params}
    start = {n: g.start_step for g in p.groups for n in g.params}
    b1, b2 = p.optimizer.betas
    m = {n: torch.zeros_like(params[n]) for n in scale}
    v = {n: torch.zeros_like(params[n]) for n in scale}
    t = {n: 0 for n in scale}
    for s in range(steps):
        for q in params.values():
            q.grad = None
        for n, q in params.items():
            q.requires_grad_(n in scale)
        tiny_loss(model, seed=s).backward()
        grads = {n: params[n].grad.detach().clone() for n in scale}
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
        factor = min(1.0, p.clip_grad_norm / (float(norm) + 1e-6))
        grads = {n: g * factor for n, g in grads.items() if s >= start[n]}
        lr = p.base_lr * lr_factor(p, s)
        with torch.no_grad():
            for n, g in grads.items():
                t[n] += 1
                lr_n = lr * scale[n]
                decay = 1 - lr_n * p.optimizer.weight_decay if params[n].ndim == 2 else 1.0
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = b2 * v[n] + (1 - b2) * g * g
                upd = (lr_n / (1 - b1 ** t[n])) * m[n] / ((v[n] / (1 - b2 ** t[n])).sqrt() + p.optimizer.eps)
                params[n].copy_(params[n] * decay - upd)
    return {n: q.detach().clone() for n, q in params.items()}


@pytest.mark.parametrize("clip", [1.0, 0.05])
def test_matches_hand_written_rust_step(clip):
    p = plan(**{"groups.1.start_step": 2, "clip_grad_norm": clip})
    want = reference_run(p, 5, Tiny().double())
    model, _, _, snaps = frozen_and_moving(p, 5, model=Tiny().double())
    for n, w in want.items():
        assert torch.allclose(snaps[-1][n], w, rtol=0, atol=1e-12), n


def test_weight_decay_only_on_rank2():
    # A zero gradient makes Adam's update exactly 0, so only decoupled decay moves weights.
    p = plan(frozen=[], **{"groups.1.params": ["b.weight", "norm.weight", "head.weight", "embed.weight"]})
    model = Tiny().double()
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    stepper = PlanStepper(model, p)
    stepper.backward(tiny_loss(model) * 0.0)
    out = stepper.step()
    for n, q in model.named_parameters():
        lr = out.lrs[p.named[n].name]
        if q.ndim == 2:
            assert torch.allclose(q, before[n] * (1 - lr * 0.1), rtol=0, atol=1e-15), n
        else:
            assert torch.equal(q, before[n]), n


def test_grad_accum_scales_micro_batches():
    p = plan(grad_accum=2, clip_grad_norm=None)
    model = Tiny().double()
    stepper = PlanStepper(model, p)
    stepper.backward(tiny_loss(model, seed=1))
    stepper.backward(tiny_loss(model, seed=2))
    got = model.a.weight.grad.clone()
    model.zero_grad()
    ((tiny_loss(model, seed=1) + tiny_loss(model, seed=2)) / 2).backward()
    assert torch.allclose(got, model.a.weight.grad, atol=1e-14)


def test_nonfinite_loss_changes_nothing():
    p = plan()
    model = Tiny()
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    stepper = PlanStepper(model, p)
    stepper.backward(tiny_loss(model) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        stepper.step()
    assert all(torch.equal(q, before[n]) for n, q in model.named_parameters())
    assert stepper.step_index == 0 and not stepper.optimizer.state


def test_drop_unstarted_needs_a_plan_optimizer(tiny):
    opt = torch.optim.AdamW(tiny.parameters())
    with pytest.raises(PlanError, match="make_optimizer"):
        drop_unstarted_grads(opt, 0)


def test_scheduler_state_dict_roundtrip(tiny):
    p = plan()
    opt = make_optimizer(tiny, p)
    sched = make_scheduler(opt, p)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = make_optimizer(Tiny(), p)
    sched2 = make_scheduler(opt2, p)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 3


def test_normalize_name():
    assert normalize_name("model.layers.3.mlp.down_proj.weight") == "model.layers.3.mlp.down_proj.weight"
    assert normalize_name("lm_head.weight") == "lm_head.weight"
    assert (normalize_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
            == "model.layers.0.self_attn.q_proj.lora_A.weight")
    assert (normalize_name("base_model.model.model.layers.2.mlp.up_proj.lora_B.default.weight")
            == "model.layers.2.mlp.up_proj.lora_B.weight")
    # PEFT moves a wrapped projection's own weight under `.base_layer`; the plan keeps the HF name.
    assert (normalize_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
            == "model.layers.0.self_attn.q_proj.weight")
    assert (normalize_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias")
            == "model.layers.0.self_attn.q_proj.bias")
    assert normalize_name("base_model.model.lm_head.weight") == "lm_head.weight"
    assert (normalize_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.safety.weight", "safety")
            == "model.layers.0.self_attn.q_proj.lora_A.weight")
    # Wrapper segments of FSDP, activation checkpointing and torch.compile are removed.
    assert (normalize_name("_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module"
                           ".self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight")
    assert normalize_name("_orig_mod.lm_head.weight") == "lm_head.weight"
    # A module that happens to be called `default` outside a lora_ container is kept.
    assert normalize_name("model.default.weight") == "model.default.weight"
    assert peft_saved_name("model.layers.0.self_attn.q_proj.lora_A.weight") == (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
