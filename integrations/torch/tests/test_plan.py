"""Plan reading and validation (torch only)."""

import json
import os

import pytest
from conftest import ARCHS, PLAN_FIXTURES, tiny_plan_dict

from secure_tuning_torch import PlanError, load_plan, plan_from_dict


def write(tmp_path, data, name="plan.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# What write_fixture_plans.sh asks `secure-tuning export-plan` for (robust set L0.q, L0.v, L1.down;
# lr 1e-3, 3 steps, batch 4, weight decay 0.1, max_len 32): strategy and {group: (lr_scale, start_step)}.
# The exporter decides the order of the groups, so the tests do not depend on it.
FIXTURE_PLANS = {
    "plan.json": ("ml-lr", {"robust": (1.0, 0), "rest": (0.1, 0), "non-module": (0.1, 0)}),
    "plan_swat.json": ("swat", {"robust": (1.0, 0), "rest": (0.1, 1), "non-module": (0.1, 1)}),
    "plan_frozen.json": ("freeze-rest", {"robust": (1.0, 0)}),
}
ROBUST_MODULES = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", sorted(FIXTURE_PLANS))
def test_fixture_plans_load(arch, which):
    path = os.path.join(PLAN_FIXTURES, arch, which)
    with open(path) as f:
        assert isinstance(json.load(f)["source_plan"], dict)  # exported files carry it; load_plan ignores it
    plan = load_plan(path)
    strategy, groups = FIXTURE_PLANS[which]
    assert plan.strategy == strategy
    assert {g.name: (g.lr_scale, g.start_step) for g in plan.groups} == groups
    assert plan.base_lr == 1e-3 and plan.clip_grad_norm == 1.0
    assert (plan.schedule.warmup_steps, plan.schedule.total_steps, plan.schedule.min_lr_ratio) == (1, 3, 0.1)
    assert (plan.batch_size, plan.grad_accum, plan.max_len, plan.lora) == (4, 1, 32, None)
    assert plan.optimizer.betas == (0.9, 0.999) and plan.optimizer.eps == 1e-8
    assert plan.optimizer.weight_decay == 0.1
    assert plan.model.name_or_path == f"tests/fixtures/{arch}" and plan.model.num_hidden_layers == 3
    # The robust group is exactly the weights (and qwen2's biases) of the three robust modules.
    assert {n.rsplit(".", 1)[0] for n in plan.group("robust").params} == ROBUST_MODULES


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_plans_agree_with_each_other(arch):
    """The three plans split the same tensors: ML-LR and SWAT into the same groups and nothing
    frozen, freeze-rest keeps the robust group and freezes everything else."""
    plans = {w: load_plan(os.path.join(PLAN_FIXTURES, arch, w)) for w in FIXTURE_PLANS}
    members = {w: {g.name: set(g.params) for g in p.groups} for w, p in plans.items()}
    assert members["plan.json"] == members["plan_swat.json"]
    assert plans["plan.json"].frozen == () and plans["plan_swat.json"].frozen == ()
    assert members["plan_frozen.json"] == {"robust": members["plan.json"]["robust"]}
    assert set(plans["plan_frozen.json"].frozen) == members["plan.json"]["rest"] | members["plan.json"]["non-module"]
    assert len({frozenset(p.named) for p in plans.values()}) == 1


def test_roundtrip_fields(tmp_path):
    plan = load_plan(write(tmp_path, tiny_plan_dict()))
    assert plan.group("rest").params == ("b.weight", "norm.weight", "head.weight")
    assert plan.named["embed.weight"] is None and plan.named["a.bias"].name == "robust"
    assert plan.source.endswith("plan.json")


def test_unknown_format_names_file_and_supported(tmp_path):
    path = write(tmp_path, tiny_plan_dict(format="other-plan"), "weird.json")
    with pytest.raises(PlanError) as e:
        load_plan(path)
    msg = str(e.value)
    assert "weird.json" in msg and "`format`" in msg and "secure-tuning-plan" in msg


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, True, None])
def test_other_versions_rejected(tmp_path, version):
    path = write(tmp_path, tiny_plan_dict(version=version))
    with pytest.raises(PlanError, match=r"plan\.json: field `version`.*supports .*version\(s\) 1 only"):
        load_plan(path)


def test_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(PlanError, match="broken.json: not valid JSON"):
        load_plan(path)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"schedule.warmup_steps": -1}, "schedule.warmup_steps"),
        ({"schedule.total_steps": 0}, "schedule.total_steps"),
        ({"schedule.min_lr_ratio": 1.5}, "schedule.min_lr_ratio"),
        ({"schedule.type": "linear"}, "schedule.type"),
        ({"base_lr": 0}, "base_lr"),
        ({"base_lr": "1e-3"}, "base_lr"),
        ({"optimizer.type": "sgd"}, "optimizer.type"),
        ({"optimizer.betas": [0.9]}, "optimizer.betas"),
        ({"optimizer.betas": [0.9, 1.0]}, "optimizer.betas[1]"),
        ({"optimizer.eps": 0}, "optimizer.eps"),
        ({"optimizer.weight_decay": -0.1}, "optimizer.weight_decay"),
        ({"optimizer.weight_decay_applies_to": "all"}, "optimizer.weight_decay_applies_to"),
        ({"clip_grad_norm": 0}, "clip_grad_norm"),
        ({"batch_size": 0}, "batch_size"),
        ({"grad_accum": 1.5}, "grad_accum"),
        ({"seed": True}, "seed"),
        ({"loss": "mean-of-means"}, "loss"),
        ({"strategy": ""}, "strategy"),
        ({"model.num_hidden_layers": 0}, "model.num_hidden_layers"),
        ({"groups.0.lr_scale": 0}, "groups[0].lr_scale"),
        ({"groups.0.lr_scale": -1}, "groups[0].lr_scale"),
        ({"groups.1.start_step": -2}, "groups[1].start_step"),
        ({"groups.1.name": "robust"}, "groups[1].name"),
        ({"groups.1.params": ["b.weight", 3]}, "groups[1].params[1]"),
        ({"groups.1.params": ["a.weight"]}, "groups[1].params"),
        ({"frozen": ["a.bias"]}, "frozen"),
        ({"groups": []}, "groups"),
        ({"lora": {"r": 0, "lora_alpha": 1, "target_modules": ["q_proj"], "lora_dropout": 0, "init_seed": 0}}, "lora.r"),
        ({"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["qkv"], "lora_dropout": 0, "init_seed": 0}},
         "lora.target_modules[0]"),
        ({"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "init_seed": 0}}, "lora"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path, changes, field):
    path = write(tmp_path, tiny_plan_dict(**changes), "bad_plan.json")
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}: field `{field}`"), str(e.value)


def test_missing_and_unknown_top_level_keys(tmp_path):
    d = tiny_plan_dict()
    del d["max_len"]
    with pytest.raises(PlanError, match="is missing `max_len`"):
        plan_from_dict(d, "p.json")
    d = tiny_plan_dict(extra_field=1)
    with pytest.raises(PlanError, match="unknown key.*`extra_field`"):
        plan_from_dict(d, "p.json")


SOURCE_PLAN = {"robust": ["layers.0.self_attn.q_proj"], "ratio": 0.1, "layer_factors": {}, "swat_warmup": None,
               "train": {"lr": 0.5, "max_steps": 99, "future_field": [1, 2]}}


def test_source_plan_is_accepted_and_ignored(tmp_path):
    """`source_plan` (the Rust library's copy of the plan) is optional and never read: the plan is
    the same with or without it, whatever it holds."""
    plain = load_plan(write(tmp_path, tiny_plan_dict()))
    assert load_plan(write(tmp_path, tiny_plan_dict(source_plan=SOURCE_PLAN))) == plain
    assert load_plan(write(tmp_path, tiny_plan_dict(source_plan={}))) == plain


@pytest.mark.parametrize("changes, unknown", [
    ({"source_plan": SOURCE_PLAN, "extra_field": 1}, "`extra_field`"),  # still rejected beside it
    ({"source_plans": SOURCE_PLAN}, "`source_plans`"),                   # a near miss is unknown
    ({"model.source_plan": SOURCE_PLAN}, "`source_plan`"),               # optional at the top level only
    ({"groups.0.source_plan": SOURCE_PLAN}, "`source_plan`"),
])
def test_unknown_keys_rejected_beside_source_plan(tmp_path, changes, unknown):
    path = write(tmp_path, tiny_plan_dict(**changes), "bad_plan.json")
    with pytest.raises(PlanError) as e:
        load_plan(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: field `") and f"unknown key(s) {unknown};" in msg, msg


def test_unknown_strategy_is_accepted():
    # `strategy` is informative only.
    assert plan_from_dict(tiny_plan_dict(strategy="something-new")).strategy == "something-new"


def test_lora_block():
    lora = {"r": 16, "lora_alpha": 32.0, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "init_seed": 7}
    plan = plan_from_dict(tiny_plan_dict(lora=lora))
    assert plan.lora.r == 16 and plan.lora.lora_alpha == 32.0 and plan.lora.target_modules == ("q_proj", "v_proj")
