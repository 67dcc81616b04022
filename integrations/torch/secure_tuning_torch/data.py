"""Token-id examples, right-padded batches and the plan's loss (``mean-over-response-tokens``).

An example is ``{"ids": [...], "loss_start": k}``: the loss covers the tokens at positions
``k..len-1`` (the response), i.e. logits at positions ``p = k-1 .. len-2`` predicting token
``p + 1``. A batch's loss is the cross-entropy averaged over all its response tokens (not a
mean of per-sequence means), as the Rust trainer computes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

#: Label value ignored by the loss (the transformers / PyTorch convention).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """A tokenised training example; the loss covers ``ids[loss_start:]``."""

    ids: tuple[int, ...]
    loss_start: int

    def __post_init__(self):
        if len(self.ids) < 2:
            raise ValueError(f"an example needs at least 2 tokens, got {len(self.ids)}")
        if not 0 <= self.loss_start < len(self.ids):
            raise ValueError(f"loss_start {self.loss_start} must be in 0..{len(self.ids) - 1}")

    @property
    def response_tokens(self) -> int:
        """How many tokens the loss covers."""
        return len(self.ids) - max(self.loss_start, 1)


def load_examples(path: str | os.PathLike) -> list[Example]:
    """Reads a JSON list of ``{"ids": [...], "loss_start": k}`` (the fixtures' ``batch.json``)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{os.fspath(path)}: expected a JSON list of examples")
    out = []
    for i, e in enumerate(data):
        try:
            out.append(Example(ids=tuple(int(x) for x in e["ids"]), loss_start=int(e["loss_start"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)}: example {i}: {err}") from err
    return out


def collate(examples: Sequence[Example], pad_id: int = 0, device=None) -> dict[str, torch.Tensor]:
    """Right-pads ``examples`` into ``input_ids``, ``attention_mask`` and ``labels``.

    ``labels`` hold the token id at response positions and ``-100`` elsewhere (prompt and
    padding), in transformers' unshifted convention: a ``*ForCausalLM`` called with these
    labels computes the same loss as :func:`response_loss` (mean over response tokens).
    """
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids, dtype=torch.long)
        mask[b, :n] = 1
        start = max(e.loss_start, 1)
        labels[b, start:n] = ids[b, start:n]
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def response_loss(model: torch.nn.Module, batch, pad_id: int = 0) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the response tokens of a right-padded batch, and their count.

    ``batch`` is a list of :class:`Example` or the dict :func:`collate` returns. The logits
    are taken in float32 whatever the model's dtype.
    """
    if not isinstance(batch, dict):
        device = next(model.parameters()).device
        batch = collate(batch, pad_id=pad_id, device=device)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out[0]
    logits = logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    n = int((targets != IGNORE_INDEX).sum())
    if n == 0:
        raise ValueError("the batch has no response tokens")
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    ) / n
    return loss, n
