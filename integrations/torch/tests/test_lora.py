"""LoRA: PEFT name mapping, plans over adapters, and the interop script (needs transformers + peft)."""

import json
import os
import sys

import pytest
import torch
from conftest import FIXTURES, PKG, tiny_plan_dict

from secure_tuning_torch import peft_saved_name


transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from secure_tuning_torch import (  # noqa: E402
    PlanMismatchError,
    PlanStepper,
    apply_lora,
    load_examples,
    named_plan_parameters,
    param_groups,
    plan_from_dict,
    response_loss,
)

LORA = {"r": 4, "lora_alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0,
        "init_seed": 3}


def load(arch="llama3"):
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(FIXTURES, arch), dtype=torch.float32, attn_implementation="eager")


def lora_plan(base_names, layers=3, drop=(), extra=()):
    """Adapters of layer 0's q/v at 1.0, the others at 0.1; every base weight frozen."""
    robust, rest = [], []
    for layer in range(layers):
        for mod in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            for ab in ("lora_A", "lora_B"):
                n = f"model.layers.{layer}.{mod}.{ab}.weight"
                if n in drop:
                    continue
                (robust if layer == 0 and "self_attn" in mod else rest).append(n)
    d = tiny_plan_dict(lora=LORA, frozen=list(base_names), **{
        "model": {"name_or_path": "tests/fixtures/llama3", "model_type": "llama", "num_hidden_layers": layers},
        "groups": [
            {"name": "robust", "lr_scale": 1.0, "start_step": 0, "params": robust + list(extra)},
            {"name": "rest", "lr_scale": 0.1, "start_step": 1, "params": rest},
        ],
    })
    return plan_from_dict(d, "lora-plan.json")


def test_apply_lora_and_groups_map_peft_names():
    base = load()
    base_names = [n for n, _ in base.named_parameters()]
    plan = lora_plan(base_names)
    model = apply_lora(base, plan)
    live = [n for n, _ in model.named_parameters()]
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in live
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in live
    groups = param_groups(model, plan)
    assert sum(len(g["params"]) for g in groups) == 18  # 3 layers x 3 modules x (A, B)
    named = named_plan_parameters(model)
    for n in base_names:
        assert not named[n].requires_grad, n
    lora_mod = model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_mod.scaling["default"] == pytest.approx(8.0 / 4)
    assert lora_mod.lora_A["default"].weight.shape == (4, 32)
    assert torch.count_nonzero(lora_mod.lora_B["default"].weight) == 0  # B starts at zero


def test_lora_init_seed_is_reproducible_and_leaves_global_rng():
    plan = lora_plan([n for n, _ in load().named_parameters()])
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = apply_lora(load(), plan)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = apply_lora(load(), plan)
    wa = named_plan_parameters(a)["model.layers.1.mlp.down_proj.lora_A.weight"]
    wb = named_plan_parameters(b)["model.layers.1.mlp.down_proj.lora_A.weight"]
    assert torch.equal(wa, wb) and torch.count_nonzero(wa) > 0


def test_lora_mismatch_lists_all_and_hints():
    base = load()
    base_names = [n for n, _ in base.named_parameters()]
    drop = ("model.layers.2.mlp.down_proj.lora_B.weight",)
    extra = ("model.layers.0.self_attn.k_proj.lora_A.weight",)
    plan = lora_plan(base_names, drop=drop, extra=extra)
    model = apply_lora(base, plan)
    with pytest.raises(PlanMismatchError) as e:
        param_groups(model, plan)
    msg = str(e.value)
    assert "  model.layers.2.mlp.down_proj.lora_B.weight" in msg
    assert "  model.layers.0.self_attn.k_proj.lora_A.weight" in msg
    # Forgetting apply_lora: every adapter name is reported, with a hint.
    with pytest.raises(PlanMismatchError, match="call apply_lora"):
        param_groups(load(), lora_plan(base_names))


def test_lora_swat_step_moves_only_started_adapters():
    base = load()
    plan = lora_plan([n for n, _ in base.named_parameters()])
    model = apply_lora(base, plan)
    examples = load_examples(os.path.join(FIXTURES, "plans", "llama3", "batch.json"))
    before = {n: p.detach().clone() for n, p in named_plan_parameters(model).items()}
    stepper = PlanStepper(model, plan)
    loss, _ = response_loss(model, examples)
    stepper.backward(loss)
    stepper.step()
    after = named_plan_parameters(model)
    for n, p in after.items():
        g = plan.named[n]
        # Step 0: B of the robust adapters moves; their A has a zero gradient while B is zero,
        # so only decoupled weight decay (rank-2) scales it; the late group's adapters and every
        # base weight stay bit-identical.
        if g is not None and g.name == "robust" and ".lora_B." in n:
            assert not torch.equal(p, before[n]), n
        elif g is not None and g.name == "robust":
            assert torch.allclose(p, before[n] * (1 - 0.01 * 0.5 * 0.1), rtol=0, atol=1e-9), n
        else:
            assert torch.equal(p, before[n]), n


def test_interop_script_reads_peft_adapter(tmp_path):
    """A PEFT adapter saved from a fixture loads through check_hf_interop with the same logits."""
    sys.path.insert(0, os.path.join(PKG, "scripts"))
    import check_hf_interop

    base = load()
    plan = lora_plan([n for n, _ in base.named_parameters()])
    model = apply_lora(base, plan)
    with torch.no_grad():  # make the adapters matter: B away from zero
        g = torch.Generator().manual_seed(5)
        for n, p in named_plan_parameters(model).items():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    from safetensors.torch import load_file

    saved = load_file(adapter_dir / "adapter_model.safetensors")
    plan_adapters = [n for g in plan.groups for n in g.params]
    assert sorted(saved) == sorted(peft_saved_name(n) for n in plan_adapters)

    ids = [1, 15, 27, 42, 63, 5, 88, 101]
    model.eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0, -1]
        base_logits = load()(input_ids=torch.tensor([ids])).logits[0, -1]
    assert not torch.allclose(want, base_logits, atol=1e-3)

    # The adapter_config.json the Rust tool needs to write at least (hand-made, minimal).
    (adapter_dir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8.0,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0, "bias": "none",
        "base_model_name_or_path": "tests/fixtures/llama3",
    }))
    out = tmp_path / "logits.json"
    res = check_hf_interop.main(["--model", os.path.join(FIXTURES, "llama3"), "--adapter", str(adapter_dir),
                                 "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["token_ids"] == ids and len(data["logits"]) == 320 and data == json.loads(json.dumps(res))
    assert torch.allclose(torch.tensor(data["logits"]), want, atol=1e-5)
    # Without the adapter: the base model's logits.
    res = check_hf_interop.last_logits(os.path.join(FIXTURES, "llama3"), None, ids)
    assert torch.allclose(torch.tensor(res["logits"]), base_logits, atol=1e-5)
    # A file with a tensor the model lacks fails loudly.
    extra = dict(saved)
    extra["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = torch.zeros(4, 32)
    from safetensors.torch import save_file

    save_file(extra, adapter_dir / "adapter_model.safetensors")
    with pytest.raises(SystemExit, match="k_proj.lora_A.weight"):
        check_hf_interop.last_logits(os.path.join(FIXTURES, "llama3"), str(adapter_dir), ids)
