"""The recompute attention kernel: eager's gradients, sdpa's memory, sdpa wherever it does not apply."""

from __future__ import annotations

import pytest
import torch

from instructune.testing import tiny_model
from instructune.training import attention
from instructune.training.attention import set_attention
from instructune.training.batching import collate, completion_loss_sum


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    rows = []
    for n in (5, 12, 8):  # right-padded to 14
        ids = torch.randint(4, 64, (n + 2,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * n + ids[n:]})
    return collate(rows, 2)


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per CausalAttention call, i.e. per layer that took the recompute kernel."""
    calls: list[int] = []
    apply = attention.CausalAttention.apply
    monkeypatch.setattr(attention.CausalAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def loss_and_grads(impl: str, b: dict[str, torch.Tensor], bf16: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_model(70)  # 4 query heads share 2 key/value heads
    set_attention(model, impl)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = completion_loss_sum(model, b, True)
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters()}


def test_kernel_gradients_equal_the_reference_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 16, generator=g, requires_grad=True) for _ in range(3))
    d_out = torch.randn(2, 3, 9, 16, generator=g)
    out = attention.CausalAttention.apply(q, k, v, 0.3)
    ours = torch.autograd.grad(out, (q, k, v), d_out)
    ref_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    ref = torch.autograd.grad(ref_out, (q, k, v), d_out)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_trains_as_with_eager_and_the_kernel_is_used(kernel_calls: list[int]) -> None:
    b = batch()
    loss, grads = loss_and_grads("recompute", b)
    assert len(kernel_calls) == 2  # both layers, the right-padded batch needs no mask
    eager_loss, eager_grads = loss_and_grads("eager", b)
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6)

    # under bf16 autocast: eager's result up to bf16 rounding
    loss16, _ = loss_and_grads("recompute", b, bf16=True)
    eager16, _ = loss_and_grads("eager", b, bf16=True)
    assert loss16 == pytest.approx(eager16, rel=2e-2)


def test_masked_and_cached_calls_go_to_sdpa(kernel_calls: list[int]) -> None:
    model = tiny_model(70).eval()
    set_attention(model, "recompute")
    ids = torch.randint(4, 64, (2, 6))
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])).logits
        model.generate(ids, max_new_tokens=3, do_sample=False)  # prefill (2 calls), then 1-token steps
    assert len(kernel_calls) == 2
    set_attention(model, "sdpa")
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])).logits
    torch.testing.assert_close(masked, reference)


def test_backward_keeps_no_attention_weights() -> None:
    def saved_shapes(impl: str) -> list[tuple[int, ...]]:
        model = tiny_model(70)
        set_attention(model, impl)
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            completion_loss_sum(model, batch(), True)
        return shapes

    square = (3, 4, 14, 14)  # batch, heads, query, key: one layer's attention weights
    assert square in saved_shapes("eager")
    assert square not in saved_shapes("recompute")
