"""Prompt masking for training: exactly the completion tokens and EOS carry labels."""

from __future__ import annotations

import pytest

from instructune.data.tokenize import IGNORE_INDEX, encode
from instructune.testing import tiny_tokenizer


@pytest.mark.parametrize("chat", [True, False])
def test_only_completion_and_eos_are_labelled(chat: bool) -> None:
    tok = tiny_tokenizer(chat_template=chat)
    ex = encode(tok, "Review: a great film. Positive or negative?", "positive", max_length=128)
    assert ex is not None
    ids, labels = ex["input_ids"], ex["labels"]
    completion = tok(("" if chat else " ") + "positive", add_special_tokens=False)["input_ids"]
    n = len(completion) + 1  # + EOS
    assert labels[-n:] == completion + [tok.eos_token_id] == ids[-n:]
    assert labels[:-n] == [IGNORE_INDEX] * (len(ids) - n)
    prompt = tok.decode(ids[:-n])
    if chat:  # the prompt is the user turn, then the assistant turn opens
        assert prompt.startswith("<|im_start|>user\nReview: a great film.")
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert prompt == "Review: a great film. Positive or negative?"


def test_long_prompt_is_cut_in_the_middle_never_the_completion() -> None:
    tok = tiny_tokenizer(chat_template=True)
    prompt = "START " + "word " * 300 + "Answer with one word: positive or negative."
    ex = encode(tok, prompt, "negative", max_length=64)
    assert ex is not None and len(ex["input_ids"]) <= 64
    text = tok.decode(ex["input_ids"])
    assert "START" in text and "Answer with one word: positive or negative." in text and " … " in text
    kept = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(kept) == "negative<|im_end|>"


def test_completion_that_cannot_fit_is_dropped() -> None:
    tok = tiny_tokenizer(chat_template=True)
    assert encode(tok, "x", "positive " * 100, max_length=64) is None
