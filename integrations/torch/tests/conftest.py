"""Shared helpers: a tiny pure-torch model, plan dicts built in the test, fixture paths."""

import copy
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.abspath(os.path.join(HERE, ".."))
ROOT = os.path.abspath(os.path.join(PKG, "..", ".."))
sys.path.insert(0, PKG)  # the package from this checkout, installed or not

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PLAN_FIXTURES = os.path.join(FIXTURES, "plans")
ARCHS = ("llama3", "qwen2", "mistral")

# One thread: the models are tiny; on a busy 2-core machine 2 threads made the suite 3-4x slower.
torch.set_num_threads(1)


class Tiny(torch.nn.Module):
    """Names like a causal LM: ``embed.weight`` (2-D), ``a.weight``/``a.bias``, ``b.weight``,
    ``norm.weight`` (1-D), ``head.weight``."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.a = torch.nn.Linear(dim, dim)
        self.b = torch.nn.Linear(dim, dim, bias=False)
        self.norm = torch.nn.LayerNorm(dim, bias=False)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 else 0.0))

    def forward(self, ids):
        h = self.embed(ids)
        h = h + torch.tanh(self.a(h))
        h = h + self.b(h)
        return self.head(self.norm(h))


TINY_NAMES = ["embed.weight", "a.weight", "a.bias", "b.weight", "norm.weight", "head.weight"]


def tiny_loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    logits = model(ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 11), ids[:, 1:].reshape(-1))


BASE = {
    "format": "secure-tuning-plan",
    "version": 1,
    "strategy": "ml-lr",
    "model": {"name_or_path": "tiny", "model_type": "tiny", "num_hidden_layers": 1},
    "base_lr": 0.01,
    "optimizer": {"type": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1,
                  "weight_decay_applies_to": "rank-2"},
    "schedule": {"type": "linear-warmup-cosine", "warmup_steps": 2, "total_steps": 6, "min_lr_ratio": 0.1},
    "clip_grad_norm": 1.0,
    "batch_size": 3, "grad_accum": 1, "seed": 0, "max_len": 16,
    "loss": "mean-over-response-tokens",
    "lora": None,
    "groups": [
        {"name": "robust", "lr_scale": 1.0, "start_step": 0, "params": ["a.weight", "a.bias"]},
        {"name": "rest", "lr_scale": 0.1, "start_step": 0, "params": ["b.weight", "norm.weight", "head.weight"]},
    ],
    "frozen": ["embed.weight"],
}


def tiny_plan_dict(**changes):
    """A copy of BASE for the Tiny model; ``changes`` replace top-level keys; a dotted key
    like ``schedule.warmup_steps`` or ``groups.1.start_step`` sets a nested value."""
    d = copy.deepcopy(BASE)
    for key, value in changes.items():
        parts = key.replace("__", ".").split(".")
        target = d
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return d


@pytest.fixture
def tiny():
    return Tiny()
