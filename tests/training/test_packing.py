"""Packing: rows that hold each example once, and a packed batch that trains exactly as its examples alone."""

from __future__ import annotations

import random

import pytest
import torch

from instructune.testing import tiny_model
from instructune.training.attention import set_attention
from instructune.training.batching import IGNORE_INDEX, collate, completion_loss_sum, pack


def examples(n: int, seed: int = 0) -> list[dict]:
    """Prompt-completion shaped examples of varied lengths: labels only on the tail of each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(6, 40)
        ids = [rng.randrange(3, 500) for _ in range(length)]
        answer = rng.randint(2, length - 2)
        out.append({"id": i, "input_ids": ids, "labels": [IGNORE_INDEX] * (length - answer) + ids[-answer:]})
    return out


def test_rows_hold_every_example_once_and_fit() -> None:
    exs = examples(40)
    rows = pack(exs, 64)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    assert sorted(i for r in rows for i in map(int, r["id"].split("+"))) == list(range(40))
    assert sum(r["examples"] for r in rows) == 40 and len(rows) < 40 / 2  # best fit fills rows
    for r in rows:
        starts = [k for k, p in enumerate(r["position_ids"]) if p == 0]
        assert len(starts) == r["examples"]
        assert all(r["labels"][k] == IGNORE_INDEX for k in starts)  # nothing learns the next example's start


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("kernel", ["recompute", "sdpa", "eager"])
def test_a_packed_batch_equals_its_examples_one_by_one(dtype: torch.dtype, atol: float, kernel: str) -> None:
    model = tiny_model(512, seed=1)
    set_attention(model, kernel)
    exs = examples(12, seed=2)
    rows = pack(exs, 96)
    assert any(r["examples"] > 2 for r in rows)

    def loss_and_grads(batches: list[dict]) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        total = 0.0
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = completion_loss_sum(model, batch, only_completion_logits=True)
            loss.backward()
            total += float(loss)
        return total, [p.grad.detach().clone() for p in model.parameters()]

    alone_loss, alone = loss_and_grads([collate([e], pad_id=2) for e in exs])
    packed_loss, packed = loss_and_grads([collate(rows, pad_id=2)])
    scale = max(float(g.abs().max()) for g in alone)
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5 if dtype == torch.float32 else 2e-2)
    for a, b in zip(alone, packed, strict=True):
        assert torch.allclose(a, b, atol=atol * scale, rtol=0)


def test_without_restarting_positions_the_examples_would_see_each_other() -> None:
    """The parity above is not trivial: the same row with plain positions gives another loss."""
    model = tiny_model(512, seed=1)
    rows = pack(examples(12, seed=2), 96)
    batch = collate(rows, pad_id=2)
    with torch.no_grad():
        packed = float(completion_loss_sum(model, batch, True))
        plain = float(completion_loss_sum(model, {k: v for k, v in batch.items() if k != "position_ids"}, True))
    assert abs(packed - plain) > 1e-3 * abs(packed)
