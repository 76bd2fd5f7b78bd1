"""Conversations: which tokens carry labels (token by token), formats recognised, bad conversations refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.data import chat, chat_template, formats
from instructune.data.build import build, read_split
from instructune.data.templates import RowError
from instructune.data.tokenize import IGNORE_INDEX, encode_records
from instructune.errors import InstructuneError
from instructune.testing import tiny_tokenizer

CONVERSATION = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome is."},
                {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": "You are welcome."}]
ANSWERS = ["Paris is the capital.", "Rome is.", "You are welcome."]


def trained_runs(tok, example: dict) -> list[str]:
    """The decoded runs of consecutive labelled tokens, after checking each label is its own token."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        assert label in (IGNORE_INDEX, token)
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def test_exactly_the_assistant_turns_and_their_end_tokens_train_chatml() -> None:
    tok = tiny_tokenizer()
    [example], dropped = chat.encode_conversation(tok, CONVERSATION, 400)
    assert dropped == 0
    assert trained_runs(tok, example) == [f"{a}<|im_end|>" for a in ANSWERS]
    # token by token: everything else (system, user, role markers, the newline after <|im_end|>) is -100
    text = chat.render(tok, CONVERSATION)
    assert tok.decode(example["input_ids"]) == text
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = [k for k, t in enumerate(example["input_ids"]) if t == end]
    assert len(ends) == 7 and [example["labels"][k] == end for k in ends] == [False, False, True, False, True, False,
                                                                             True]
    n_labelled = sum(label != IGNORE_INDEX for label in example["labels"])
    assert n_labelled == sum(len(tok(f"{a}<|im_end|>", add_special_tokens=False)["input_ids"]) for a in ANSWERS)


def test_last_assistant_leaves_only_the_last_turn() -> None:
    tok = tiny_tokenizer()
    [example], _ = chat.encode_conversation(tok, CONVERSATION, 400, "last_assistant")
    assert trained_runs(tok, example) == [f"{ANSWERS[-1]}<|im_end|>"]


def test_a_model_without_a_chat_template_uses_the_named_fallback() -> None:
    tok = tiny_tokenizer(chat_template=False)
    with pytest.raises(InstructuneError, match="no chat template.*data.chat_format"):
        chat.encode_conversation(tok, CONVERSATION, 400)
    chat_template.use_chat_format(tok, "plain")
    [example], _ = chat.encode_conversation(tok, CONVERSATION, 400)
    assert trained_runs(tok, example) == [f"{a}{tok.eos_token}" for a in ANSWERS]
    assert "### User:" in tok.decode(example["input_ids"]) and "### User:" not in "".join(trained_runs(tok, example))


@pytest.mark.real_model
def test_smollm2_template_trains_exactly_the_answers(real_model: str) -> None:
    from instructune.data.build import load_tokenizer

    tok = load_tokenizer(real_model)
    [example], _ = chat.encode_conversation(tok, CONVERSATION, 400)
    assert trained_runs(tok, example) == [f"{a}<|im_end|>" for a in ANSWERS]
    no_system = CONVERSATION[1:]  # SmolLM2's template adds its own system turn: still never trained
    [example], _ = chat.encode_conversation(tok, no_system, 400)
    assert "SmolLM" in tok.decode(example["input_ids"]) and trained_runs(tok, example) == [f"{a}<|im_end|>"
                                                                                         for a in ANSWERS]


def test_a_template_that_rerenders_earlier_turns_gives_one_example_per_turn() -> None:
    tok = tiny_tokenizer()
    # like templates that drop earlier reasoning: an earlier answer is shown shortened once a later turn exists
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:4] }}"
                         "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    examples, _ = chat.encode_conversation(tok, CONVERSATION, 400)
    assert [trained_runs(tok, e) for e in examples] == [[f"{a}<|im_end|>"] for a in ANSWERS]
    assert "Pari<|im_end|>" in tok.decode(examples[2]["input_ids"])  # the third as the model saw it then


def test_too_long_a_conversation_is_cut_after_a_whole_turn_or_dropped() -> None:
    tok = tiny_tokenizer()
    [whole], _ = chat.encode_conversation(tok, CONVERSATION, 400)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    first_end = next(k for k, label in enumerate(whole["labels"]) if label == end) + 1  # after the first answer
    [cut], dropped = chat.encode_conversation(tok, CONVERSATION, first_end + 3)
    assert dropped == 0 and cut["cut"] and trained_runs(tok, cut) == [f"{ANSWERS[0]}<|im_end|>"]
    assert len(cut["input_ids"]) == first_end  # cut right after the first answer's end token, not inside one
    examples, dropped = chat.encode_conversation(tok, CONVERSATION, first_end - 1)
    assert examples == [] and dropped == 1


@pytest.mark.parametrize(("row", "fmt", "expected"), [
    ({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca",
     [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]),
    ({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca",
     [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]),
    ({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                        {"from": "gpt", "value": "a"}]}, "sharegpt",
     [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
])
def test_formats_become_conversations(row: dict, fmt: str, expected: list) -> None:
    assert formats.recognise([row], "f.jsonl")[0] == fmt
    assert formats.conversation(row, fmt) == expected


@pytest.mark.parametrize(("messages", "kind", "words"), [
    ([{"role": "user", "content": "q"}], "no final assistant turn", "no assistant turn"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "roles out of order", "messages[0]"),
    ([{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "unknown role", "messages[1].role is 'bot'"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}], "empty message",
     "messages[0].content is empty"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     "system message in the middle", "messages[1] is a system message"),
])
def test_bad_conversations_name_the_field(messages: list, kind: str, words: str) -> None:
    with pytest.raises(RowError, match=words.replace("[", r"\[").replace("]", r"\]")) as e:
        formats.conversation({"messages": messages}, "messages")
    assert e.value.kind == kind


def test_input_without_instruction_is_refused() -> None:
    with pytest.raises(RowError, match="'input' without an 'instruction'"):
        formats.conversation({"instruction": "", "input": "2 and 3", "output": "5"}, "alpaca")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_mixing_formats_names_file_line_and_field(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]
    rows.insert(3, {"instruction": "Add.", "input": "", "output": "5"})
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(InstructuneError, match=r"mixed.jsonl line 4: no 'messages' field"):
        build(str(source), [], tmp_path / "out")
    stats = build(str(source), [], tmp_path / "out", skip_bad=True)
    assert stats["data_format"] == "messages" and stats["dropped"]["bad_rows_total"] == 1


def test_auto_recognises_alpaca_and_export_round_trips(tmp_path: Path) -> None:
    rows = [{"instruction": f"Repeat {i}.", "input": "" if i % 2 else f"word {i}", "output": f"{i}"} for i in range(30)]
    stats = build(str(write_jsonl(tmp_path / "a.jsonl", rows)), [], tmp_path / "built")
    assert stats["data_format"] == "alpaca" and sum(stats["records"].values()) == 30
    train = read_split(tmp_path / "built", "train")
    assert train[0]["messages"][-1] == {"role": "assistant", "content": train[0]["completion"]}
    from instructune.data.build import export

    export(tmp_path / "built", "messages", tmp_path / "exported")
    again = build(str(tmp_path / "exported" / "train.messages.jsonl"), [], tmp_path / "again")
    assert again["data_format"] == "messages"
    assert sorted(json.dumps(r["messages"]) for r in read_split(tmp_path / "again", "train") + read_split(
        tmp_path / "again", "validation") + read_split(tmp_path / "again", "test")) == sorted(
        json.dumps(r["messages"]) for r in train)


def test_encoded_records_keep_ids_and_count_drops(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    records = [{"id": "a/messages", "template": "messages", "messages": CONVERSATION},
               {"id": "b/messages", "template": "messages", "messages": CONVERSATION[:3]}]
    out, dropped = encode_records(records, tok, 400)
    assert [e["id"] for e in out] == ["a/messages", "b/messages"] and dropped == 0
    out, dropped = encode_records(records, tok, 12)
    assert out == [] and dropped == 2
