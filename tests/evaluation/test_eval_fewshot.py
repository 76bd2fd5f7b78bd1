"""Few-shot exemplars: seeded, from the train split, stratified over labels; chat turns or text blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructune.errors import InstructuneError
from instructune.evaluation.fewshot import fewshot_messages, fewshot_prompt, format_prompt, pick_exemplars

TRAIN = [{"id": i, "prompt": f"review {i}", "completion": "positive" if i % 4 else "negative",
          "label": "pos" if i % 4 else "neg"} for i in range(40)]  # 30 pos, 10 neg


def test_fewshot_prompt_text_blocks() -> None:
    text = fewshot_prompt("Q3", [("Q1", "A1"), ("Q2", "A2")])
    assert text == "Q1\nA1\n\nQ2\nA2\n\nQ3\n"
    assert fewshot_prompt("Q", []) == "Q"


def test_fewshot_messages_are_turns() -> None:
    assert fewshot_messages("Q2", [("Q1", "A1")]) == [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]


def test_format_prompt_uses_chat_turns_only_with_a_chat_template(tiny_model_dir: Path,
                                                                  tiny_plain_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    chat, plain = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_plain_model_dir)
    ex = [("Q1", "A1")]
    assert format_prompt(chat, "Q2", ex) == ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                                             "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt(plain, "Q2", ex) == "Q1\nA1\n\nQ2\n"
    assert format_prompt(chat, "Q2", ex, raw=True) == "Q1\nA1\n\nQ2\n"
    assert format_prompt(chat, "Q2") == "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"


def test_pick_exemplars_is_seeded_and_excludes() -> None:
    a = pick_exemplars(TRAIN, 5, seed=1)
    assert a == pick_exemplars(TRAIN, 5, seed=1)
    assert len({r["id"] for r in a}) == 5
    assert any(pick_exemplars(TRAIN, 5, seed=s) != a for s in range(2, 6))
    assert all(r["id"] != 3 for s in range(20) for r in pick_exemplars(TRAIN, 5, seed=s, exclude_id=3))


def test_stratified_exemplars_show_every_label() -> None:
    for seed in range(20):
        two = pick_exemplars(TRAIN, 2, seed=seed)
        assert {r["label"] for r in two} == {"pos", "neg"}  # despite 3:1 imbalance
    one_shot_labels = {pick_exemplars(TRAIN, 1, seed=s)[0]["label"] for s in range(20)}
    assert one_shot_labels == {"pos", "neg"}
    five = pick_exemplars(TRAIN, 5, seed=0)
    assert sorted(r["label"] for r in five).count("neg") in (2, 3)


def test_too_many_shots_is_an_error() -> None:
    with pytest.raises(InstructuneError, match="3 shots asked for.*only 2"):
        pick_exemplars(TRAIN[:2], 3, seed=0)
    assert pick_exemplars(TRAIN, 0, seed=0) == []
