"""Batched generation gives the one-at-a-time greedy outputs; newline stopping ends the batch early."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from instructune.data.prompt import prompt_text
from instructune.evaluation.generate import NewlineStop, generate, generate_batch

PROMPTS = [
    "Classify the sentiment",
    "The movie was wonderful, moving and funny. The team won the match after a late goal",
    "A",
    "What is the topic of this article? business, entertainment, politics, sport, tech",
    "positive negative",
    "Write a headline for this article. Summarize the news in one sentence. The government announced",
    "dull",
]


@pytest.mark.parametrize("stop_at_newline", [True, False])
def test_batched_equals_one_at_a_time(chat_model: tuple[Any, Any], stop_at_newline: bool) -> None:
    model, tok = chat_model
    texts = [prompt_text(tok, p) for p in PROMPTS]
    batched = generate_batch(model, tok, texts, max_new_tokens=16, batch_size=3, stop_at_newline=stop_at_newline)
    single = [generate(model, tok, [t], max_new_tokens=16, batch_size=1, stop_at_newline=stop_at_newline)[0]
              for t in texts]
    assert batched.texts == single
    assert len(set(single)) == len(single)  # the outputs differ, so the order is checked too
    if stop_at_newline:
        assert all("\n" not in t for t in batched.texts)
    else:
        assert any("\n" in t for t in batched.texts)  # the model does produce newlines
    assert batched.truncated == 0 and batched.examples_per_s > 0 and 0 < batched.new_tokens <= 16 * len(texts)


def test_newline_stop_ends_the_batch_when_every_row_has_a_newline(newline_model: tuple[Any, Any]) -> None:
    model, tok = newline_model
    texts = [prompt_text(tok, p) for p in PROMPTS[:4]]
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        free = generate(model, tok, texts, max_new_tokens=40, batch_size=4)
        n_free = len(calls)
        calls.clear()
        stopped = generate(model, tok, texts, max_new_tokens=40, batch_size=4, stop_at_newline=True)
    finally:
        handle.remove()
    assert n_free == 40 and len(calls) < 40
    assert stopped == [t.lstrip().split("\n")[0] for t in free]


def test_newline_stop_criterion_per_row(chat_model: tuple[Any, Any]) -> None:
    _, tok = chat_model
    nl, a = tok.convert_tokens_to_ids("Ċ"), tok.encode("a", add_special_tokens=False)[0]
    stop = NewlineStop(tok)
    steps = [[nl, a], [a, a], [nl, nl]]  # row 0: leading newline then "a" then newline; row 1: "a" then newline
    seen = [stop(torch.tensor([step]).T, None).tolist() for step in steps]
    assert seen == [[False, False], [False, False], [True, True]]


def test_long_prompts_are_cut_from_the_left(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    end = " Summarize the news in one sentence."
    n_end = len(tok(end, add_special_tokens=False)["input_ids"])
    texts = ["The team won the match." + end, "A dull, lifeless film with no plot at all." + end, "short"]
    out = generate_batch(model, tok, texts, max_new_tokens=8, batch_size=3, max_prompt_tokens=n_end)
    assert out.truncated == 2
    assert out.texts[0] == out.texts[1] == generate(model, tok, [end], max_new_tokens=8)[0]


def test_bf16_autocast_runs_and_mostly_agrees(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    texts = [prompt_text(tok, p) for p in PROMPTS]
    fp32 = generate(model, tok, texts, max_new_tokens=4, batch_size=4)
    bf16 = generate(model, tok, texts, max_new_tokens=4, batch_size=4, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.float32  # weights untouched
    # bf16 rounding may flip a near-tie; the first token should mostly survive
    assert sum(a[:1] == b[:1] for a, b in zip(fp32, bf16, strict=True)) >= len(texts) // 2
