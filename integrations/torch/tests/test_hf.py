"""With transformers: the committed fixture models and plans, the loss, and the Trainer callback."""

import json
import os
import warnings

import pytest
import torch
from conftest import ARCHS, FIXTURES, PLAN_FIXTURES

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from secure_tuning_torch import (  # noqa: E402
    Example,
    PlanCallback,
    PlanStepper,
    PlanTrainer,
    collate,
    load_examples,
    load_plan,
    make_optimizer,
    make_scheduler,
    named_plan_parameters,
    param_groups,
    response_loss,
    trainer_arguments,
)


def load_fixture(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return transformers.AutoModelForCausalLM.from_pretrained(
            os.path.join(FIXTURES, arch), dtype=torch.float32, attn_implementation="eager"
        )


def plan_and_batch(arch, which="plan.json"):
    d = os.path.join(PLAN_FIXTURES, arch)
    return load_plan(os.path.join(d, which)), load_examples(os.path.join(d, "batch.json"))


PLANS = ("plan.json", "plan_swat.json", "plan_frozen.json")
SUFFIX = {"plan.json": "", "plan_swat.json": "_swat", "plan_frozen.json": "_frozen"}


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_plans_cover_every_parameter(arch):
    model = load_fixture(arch)
    for which in ("plan_frozen.json", "plan.json", "plan_swat.json"):  # param_groups resets requires_grad
        plan, _ = plan_and_batch(arch, which)
        groups = param_groups(model, plan)
        names = [n for g in groups for n in g["param_names"]] + list(plan.frozen)
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert len(names) == len(set(names))
        for n, p in model.named_parameters():
            assert p.requires_grad == (n not in plan.frozen)
        if model.config.tie_word_embeddings:  # a tied lm_head is not listed separately
            assert "lm_head.weight" not in plan.named


@pytest.mark.parametrize("arch", ARCHS)
def test_response_loss_is_token_mean_and_matches_hf_labels(arch):
    model = load_fixture(arch)
    _, examples = plan_and_batch(arch)
    loss, n = response_loss(model, examples)
    assert n == sum(e.response_tokens for e in examples)
    # By hand: each example alone (no padding), positions loss_start-1 .. len-2.
    total = 0.0
    for e in examples:
        ids = torch.tensor([e.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for pos in range(max(e.loss_start, 1) - 1, len(e.ids) - 1):
            total -= float(logp[pos, e.ids[pos + 1]])
    assert float(loss.detach()) == pytest.approx(total / n, abs=2e-5)
    # transformers' own loss with collate()'s labels is the same quantity.
    batch = collate(examples)
    assert float(model(**batch).loss.detach()) == pytest.approx(float(loss.detach()), abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", PLANS)
def test_committed_references_reproduce(arch, which):
    """PlanStepper on each committed plan gives the committed reference weights, losses, LRs and
    gradient norms (the files tests/plans.rs holds the Rust trainer to)."""
    model = load_fixture(arch)
    plan, examples = plan_and_batch(arch, which)
    stepper = PlanStepper(model, plan)
    losses, lrs, norms = [], [], []
    for _ in range(plan.schedule.total_steps):
        loss, _ = response_loss(model, examples)
        stepper.backward(loss)
        out = stepper.step()
        losses.append(out.loss), lrs.append(out.lrs), norms.append(out.grad_norm)
    d = os.path.join(PLAN_FIXTURES, arch)
    ref = safetensors_torch.load_file(os.path.join(d, f"after_3_steps{SUFFIX[which]}.safetensors"))
    params = named_plan_parameters(model)
    assert set(ref) == {n for g in plan.groups for n in g.params}
    for n, w in ref.items():
        assert torch.allclose(params[n], w, rtol=0, atol=1e-6), n
    with open(os.path.join(d, f"losses{SUFFIX[which]}.json")) as f:
        want = json.load(f)
    assert want["plan"] == which
    # ~8 float32 ulps: the thread count changes the order of the reductions (the suite uses 1)
    assert losses == pytest.approx(want["losses"], rel=1e-6, abs=0)
    assert norms == pytest.approx(want["grad_norms"], rel=1e-6, abs=0)
    assert lrs == [pytest.approx(x, rel=1e-12) for x in want["group_lrs"]]


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_plan_moves_only_the_robust_set(arch):
    """plan_frozen.json (freeze-rest, ratio 0): every tensor outside the robust group is
    bit-identical after training, gets no gradient and no optimizer state; every robust tensor
    moves at every step."""
    model = load_fixture(arch)
    plan, examples = plan_and_batch(arch, "plan_frozen.json")
    assert [g.name for g in plan.groups] == ["robust"]
    robust = set(plan.group("robust").params)
    params = named_plan_parameters(model)
    assert set(plan.frozen) == set(params) - robust and plan.frozen
    start = {n: p.detach().clone() for n, p in params.items()}
    stepper = PlanStepper(model, plan)
    for step in range(plan.schedule.total_steps):
        before = {n: params[n].detach().clone() for n in robust}
        loss, _ = response_loss(model, examples)
        stepper.backward(loss)
        assert {n for n, p in params.items() if p.grad is not None} == robust
        out = stepper.step()
        assert out.lrs == pytest.approx({"robust": plan.base_lr * (0.1 if step == 2 else 1.0)})
        for n in robust:
            assert not torch.equal(params[n], before[n]), (step, n)
    for n in plan.frozen:
        assert not params[n].requires_grad and torch.equal(params[n], start[n]), n
    state_names = {n for g in stepper.optimizer.param_groups for n, p in zip(g["param_names"], g["params"])
                   if p in stepper.optimizer.state}
    assert state_names == robust
    assert all(int(stepper.optimizer.state[params[n]]["step"]) == 3 for n in robust)


_PLAIN = {}


def plain_loop_weights(arch, which):
    """Weights after the plan's steps with PlanStepper (cached: two tests compare against it)."""
    if (arch, which) not in _PLAIN:
        plan, examples = plan_and_batch(arch, which)
        model = load_fixture(arch)
        stepper = PlanStepper(model, plan)
        for _ in range(plan.schedule.total_steps):
            loss, _ = response_loss(model, examples)
            stepper.backward(loss)
            stepper.step()
        _PLAIN[arch, which] = {n: p.detach().clone() for n, p in named_plan_parameters(model).items()}
    return _PLAIN[arch, which]


# LR in effect per group and step: base_lr 1e-3, lr factor 1, 1, 0.1; in plan_swat.json rest and
# non-module (x0.1) start at step 1; plan_frozen.json trains the robust group only.
TRAINER_LRS = {
    "plan_swat.json": [{"robust": 1e-3, "rest": 0.0, "non-module": 0.0},
                       {"robust": 1e-3, "rest": 1e-4, "non-module": 1e-4},
                       {"robust": 1e-4, "rest": 1e-5, "non-module": 1e-5}],
    "plan_frozen.json": [{"robust": 1e-3}, {"robust": 1e-3}, {"robust": 1e-4}],
}


@pytest.mark.parametrize("how, which", [("callback", "plan_swat.json"), ("plan_trainer", "plan_swat.json"),
                                        ("plan_trainer", "plan_frozen.json")])
def test_trainer_equals_plain_loop(tmp_path, how, which):
    """transformers.Trainer + PlanCallback (or PlanTrainer) == PlanStepper on a SWAT plan and on
    the freeze-rest plan (whose frozen tensors must stay bit-identical under the Trainer too)."""
    arch = "qwen2"  # tied embeddings and q/k/v biases (rank-1 tensors without decay)
    plan, examples = plan_and_batch(arch, which)
    want = plain_loop_weights(arch, which)

    model = load_fixture(arch)
    start = {n: p.detach().clone() for n, p in named_plan_parameters(model).items()}
    ds = [{"ids": list(e.ids), "loss_start": e.loss_start} for e in examples]
    args = trainer_arguments(plan, str(tmp_path), use_cpu=True, disable_tqdm=True, save_strategy="no",
                             logging_strategy="no", dataloader_num_workers=0)
    common = dict(model=model, args=args, train_dataset=ds,
                  data_collator=lambda feats: collate([Example(tuple(f["ids"]), f["loss_start"]) for f in feats]))
    if how == "callback":
        opt = make_optimizer(model, plan)
        cb = PlanCallback(plan)
        trainer = transformers.Trainer(**common, optimizers=(opt, make_scheduler(opt, plan)), callbacks=[cb])
    else:
        trainer = PlanTrainer(**common, plan=plan)
        cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PlanCallback))
    trainer.train()

    # The Trainer shuffles the 4 examples (another padding layout and summation order), so
    # float rounding differs; measured max |diff| 1.2e-7 (1 thread), 1.0e-6 (2 threads, qwen2
    # layers.1 k_proj.bias) on plan_swat.json.
    got = named_plan_parameters(model)
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=0, atol=1e-5), n
    for n in plan.frozen:
        assert not got[n].requires_grad and torch.equal(got[n], start[n]), n
    assert [s for s, _ in cb.history] == [0, 1, 2]
    assert [lrs for _, lrs in cb.history] == [pytest.approx(x, rel=1e-12) for x in TRAINER_LRS[which]]
    # and every group did move (the comparison above is not between two untouched models)
    for g in plan.groups:
        assert any(not torch.equal(got[n], start[n]) for n in g.params), g.name


def test_callback_refuses_wrong_clip(tmp_path):
    plan, examples = plan_and_batch("llama3")
    model = load_fixture("llama3")
    opt = make_optimizer(model, plan)
    args = trainer_arguments(plan, str(tmp_path), use_cpu=True, max_grad_norm=5.0, disable_tqdm=True,
                             save_strategy="no", logging_strategy="no")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=[{"ids": list(e.ids), "loss_start": e.loss_start} for e in examples],
        data_collator=lambda feats: collate([Example(tuple(f["ids"]), f["loss_start"]) for f in feats]),
        optimizers=(opt, make_scheduler(opt, plan)), callbacks=[PlanCallback(plan)],
    )
    with pytest.raises(ValueError, match="max_grad_norm is 5.0"):
        trainer.train()
