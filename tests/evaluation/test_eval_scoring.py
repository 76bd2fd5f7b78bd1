"""Likelihood scores: batched == one-at-a-time, == a hand computation; classification picks the argmax."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from instructune.data.prompt import prompt_text
from instructune.evaluation.scoring import (
    classify_by_likelihood,
    completion_logprobs,
    encode_pairs,
    mean_completion_ce,
)

PROMPTS = ["Classify the sentiment", "The movie was wonderful, moving and funny. The team won the match", "A",
           "What is the topic of this article?", "dull"]
COMPLETIONS = ["positive", " a negative film", "Answer: good", "sport", "bad movie, terrible"]
CHOICES = {"pos": "positive", "neg": "negative", "neu": "neutral"}


def test_batched_equals_one_at_a_time(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS]
    batched = completion_logprobs(model, tok, prompts, COMPLETIONS, batch_size=2)
    single = [completion_logprobs(model, tok, [p], [c], batch_size=1)[0] for p, c in zip(prompts, COMPLETIONS,
                                                                                          strict=True)]
    assert [n for _, n in batched] == [n for _, n in single]
    for (b, _), (s, _) in zip(batched, single, strict=True):
        assert b == pytest.approx(s, abs=1e-4)
    assert len({round(lp, 3) for lp, _ in batched}) == len(batched)


def test_equals_a_hand_computation_with_log_softmax(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    prompt, completion = prompt_text(tok, "Classify the sentiment"), "positive"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    expected = sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(c_ids))
    [(score, n)] = completion_logprobs(model, tok, [prompt], [completion])
    assert n == len(c_ids) and score == pytest.approx(expected, abs=1e-4)


def test_empty_prompt_is_scored_after_a_bos_token(chat_model: tuple[Any, Any]) -> None:
    _, tok = chat_model
    [(ids, n)] = encode_pairs(tok, [""], ["positive"])
    assert ids[0] == tok.bos_token_id and n == len(ids) - 1


def test_truncation_keeps_the_completion(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    long_prompt = prompt_text(tok, "The movie was wonderful, moving and funny. " * 5)
    [(ids, n)] = encode_pairs(tok, [long_prompt], ["positive"], max_length=12)
    assert len(ids) == 12 and n == len(tok("positive", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("normalize", ["none", "tokens", "chars"])
def test_classify_picks_the_most_likely_choice(chat_model: tuple[Any, Any], normalize: str) -> None:
    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS]
    picked = classify_by_likelihood(model, tok, prompts, CHOICES, batch_size=4, normalize=normalize)
    for p, label in zip(prompts, picked, strict=True):
        scores = {}
        for key, text in CHOICES.items():
            [(lp, n)] = completion_logprobs(model, tok, [p], [text])
            scores[key] = lp / {"none": 1, "tokens": n, "chars": len(text)}[normalize]
        assert label == max(scores, key=scores.get)


def test_mean_completion_ce_pools_tokens(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS]
    scores = completion_logprobs(model, tok, prompts, COMPLETIONS)
    ce, ppl = mean_completion_ce(model, tok, prompts, COMPLETIONS, batch_size=3)
    expected = -sum(lp for lp, _ in scores) / sum(n for _, n in scores)
    assert ce == pytest.approx(expected, abs=1e-5) and ppl == pytest.approx(math.exp(expected), rel=1e-4)


def test_full_logits_path_gives_the_same_scores(chat_model: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from instructune.evaluation import scoring

    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS]
    slim = completion_logprobs(model, tok, prompts, COMPLETIONS, batch_size=3)
    monkeypatch.setattr(scoring, "_accepts_logits_to_keep", lambda model: False)  # a model without the argument
    full = completion_logprobs(model, tok, prompts, COMPLETIONS, batch_size=3)
    assert [n for _, n in slim] == [n for _, n in full]
    assert [lp for lp, _ in slim] == pytest.approx([lp for lp, _ in full], abs=1e-4)


@pytest.mark.parametrize("max_length", [None, 14])
def test_prompt_read_once_equals_pair_by_pair(chat_model: tuple[Any, Any], max_length: int | None) -> None:
    from instructune.evaluation.scoring import choice_logprobs

    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS]  # lengths differ: left padding of the shared pass is exercised
    answers = ["positive", "a negative film", "sport"]  # answers of different token counts
    shared = choice_logprobs(model, tok, prompts, answers, batch_size=6, max_length=max_length)
    for p, row in zip(prompts, shared, strict=True):
        pairwise = completion_logprobs(model, tok, [p] * len(answers), answers, max_length=max_length)
        assert [n for _, n in row] == [n for _, n in pairwise]
        assert [lp for lp, _ in row] == pytest.approx([lp for lp, _ in pairwise], abs=1e-4)


@pytest.mark.parametrize("adapter", ["lora", "prompt_tuning"])
def test_adapters_score_like_pair_by_pair(fresh_chat_model: tuple[Any, Any], adapter: str) -> None:
    """LoRA goes through the shared-prompt pass; prompt tuning (its own virtual tokens) pair by pair."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from instructune.evaluation.scoring import choice_logprobs

    model, tok = fresh_chat_model
    config = (LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False) if adapter == "lora"
              else PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    tuned = get_peft_model(model, config).eval()
    prompts = [prompt_text(tok, p) for p in PROMPTS[:3]]
    rows = choice_logprobs(tuned, tok, prompts, ["positive", "sport"])
    pairwise = completion_logprobs(tuned, tok, [p for p in prompts for _ in range(2)], ["positive", "sport"] * 3)
    assert [n for row in rows for _, n in row] == [n for _, n in pairwise]
    assert [lp for row in rows for lp, _ in row] == pytest.approx([lp for lp, _ in pairwise], abs=1e-4)


def test_a_long_example_is_scored_alone_and_the_scores_do_not_change(chat_model: tuple[Any, Any]) -> None:
    """A chat reference can run to thousands of tokens: a batch of 16 such examples needed attention over
    16 x 7,000^2 positions at once and ran for over ten minutes. Batches now stay under a token budget."""
    from instructune.evaluation import generate

    model, tok = chat_model
    prompts = [prompt_text(tok, p) for p in PROMPTS] + [prompt_text(tok, " ".join(PROMPTS * 6))]
    completions = COMPLETIONS + ["positive " * 30]
    widths: list[tuple[int, int]] = []
    forward = model.forward

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        widths.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        unbounded = completion_logprobs(model, tok, prompts, completions, batch_size=16)
        assert len(widths) == 1
        widths.clear()
        budget, generate.MAX_BATCH_TOKENS = generate.MAX_BATCH_TOKENS, 200
        bounded = completion_logprobs(model, tok, prompts, completions, batch_size=16)
    finally:
        generate.MAX_BATCH_TOKENS = budget
        del model.forward
    assert widths[0][0] == 1 and widths[0][1] > 100 and all(b * t <= 200 for b, t in widths[1:])
    assert [n for _, n in bounded] == [n for _, n in unbounded]
    for (b, _), (u, _) in zip(bounded, unbounded, strict=True):
        assert b == pytest.approx(u, abs=1e-4)
