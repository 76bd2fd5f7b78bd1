"""The batch loss: padding changes nothing, whichever side it is on and whether the mask is sent."""

from __future__ import annotations

import pytest
import torch

from instructune.testing import tiny_model
from instructune.training.attention import set_attention
from instructune.training.batching import collate, completion_loss_sum


def rows() -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (3, 9, 6):  # different prompt lengths: the batch is padded
        prompt = torch.randint(4, 64, (n,), generator=g).tolist()
        answer = [prompt[0] % 7 + 10, 2]
        out.append({"input_ids": prompt + answer, "labels": [-100] * n + answer})
    return out


def left_padded(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    pad = [width - len(e["input_ids"]) for e in examples]
    return {"input_ids": torch.tensor([[pad_id] * p + e["input_ids"] for p, e in zip(pad, examples)]),
            "attention_mask": torch.tensor([[0] * p + [1] * len(e["input_ids"]) for p, e in zip(pad, examples)]),
            "labels": torch.tensor([[-100] * p + e["labels"] for p, e in zip(pad, examples)])}


@pytest.mark.parametrize("attention", ["recompute", "eager", "sdpa"])
def test_padded_batch_loss_equals_the_examples_alone(attention: str) -> None:
    model = tiny_model(70).eval()
    set_attention(model, attention)
    examples = rows()
    with torch.no_grad():
        alone = sum(float(completion_loss_sum(model, collate([e], 2), True)) for e in examples)
        right = float(completion_loss_sum(model, collate(examples, 2), True))  # right-padded: no mask sent
        left = float(completion_loss_sum(model, left_padded(examples, 2), True))  # left-padded: the mask is needed
    assert right == pytest.approx(alone, rel=1e-5)
    assert left == pytest.approx(alone, rel=1e-4)


def test_right_padded_batch_is_sent_without_a_mask() -> None:
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, input_ids, attention_mask, logits_to_keep, use_cache):  # noqa: ANN001, ANN202
            seen.append(attention_mask)
            return type("Out", (), {"logits": torch.zeros(input_ids.shape[0], len(logits_to_keep), 70)})()

    examples = rows()
    completion_loss_sum(Spy(), collate(examples, 2), True)
    completion_loss_sum(Spy(), left_padded(examples, 2), True)
    assert seen[0] is None and seen[1] is not None and seen[1].shape == (3, 11)


def test_validation_batches_are_bounded_in_tokens_and_the_loss_is_unchanged() -> None:
    """One very long example (a conversation of thousands of tokens) used to make its whole batch that wide:
    8 x 6,742 positions of logits over the vocabulary took 21 GB. Batches now stay under a token budget."""
    from instructune.training.batching import validation_loss

    model = tiny_model(70).eval()
    long = {"input_ids": list(range(4, 64)) * 5, "labels": list(range(4, 64)) * 5}  # 300 tokens, all trained
    examples = rows() + [long] + rows()
    widths: list[tuple[int, int]] = []
    forward = model.forward

    def spy(**kwargs):  # noqa: ANN003, ANN202
        widths.append(tuple(kwargs["input_ids"].shape))
        return forward(**kwargs)

    model.forward = spy
    with torch.no_grad():
        bounded = validation_loss(model, examples, 2, batch_size=8, max_tokens=400)
        assert all(b * t <= 400 for b, t in widths) and (1, 300) in widths
        widths.clear()
        unbounded = validation_loss(model, examples, 2, batch_size=8, max_tokens=10**6)
    assert widths == [(7, 300)] and bounded == pytest.approx(unbounded, rel=1e-5)


def test_validation_builds_no_autograd_graph() -> None:
    """Validation ran with gradients on: every forward kept its activations for a backward that never came
    (a training step's memory, at each validation of a chat run)."""
    from instructune.training.batching import validation_loss

    model = tiny_model(70).train()
    grad_enabled: list[bool] = []
    model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    loss = validation_loss(model, rows(), 2, batch_size=2)
    assert grad_enabled and not any(grad_enabled) and loss > 0
    assert all(p.grad is None for p in model.parameters())
