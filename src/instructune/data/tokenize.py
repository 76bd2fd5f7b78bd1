"""Tokenisation for training: prompt-completion pairs -> input_ids and labels.

With a chat template the prompt is the user turn and the completion the assistant turn;
without one they are concatenated. EOS follows the completion. Labels are -100 on every
prompt and padding token, so the loss sees only the completion (and EOS):

    ids    = prompt_ids + completion_ids + [eos]
    labels = [-100] * len(prompt_ids) + completion_ids + [eos]

An over-long example loses tokens from the middle of the prompt's content (the instruction at
its end survives), never from the completion; one whose completion alone does not fit is dropped.

Content is data: a special-token string in a prompt, completion, text or message (`<|im_end|>`
written in the data) is encoded as the text it reads, never as the control token
(`special_tokens="text"`, the default), or refused, naming the record and field
(`special_tokens="refuse"`).
"""

from __future__ import annotations

from instructune.data import chat, formats
from instructune.errors import InstructuneError
from instructune.types import Record, Tokenizer

IGNORE_INDEX = -100
MIN_PROMPT_TOKENS = 8  # below this a truncated prompt says nothing: drop the example instead
SPECIAL_TOKENS = ("text", "refuse")
"""What becomes of a special-token string in training content: encoded as text, or refused."""


def completion_text(tokenizer: Tokenizer, prompt: str, completion: str) -> str:
    """What follows the formatted prompt: the completion, with a space when plain text would glue words."""
    if getattr(tokenizer, "chat_template", None) or not prompt or prompt[-1].isspace() or completion[:1].isspace():
        return completion
    return " " + completion


def encode(tokenizer: Tokenizer, prompt: str, completion: str, max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels for one example, or None when even a truncated prompt cannot fit."""
    c_ids = chat.encode_text(tokenizer, completion_text(tokenizer, prompt, completion))
    c_ids = c_ids + [tokenizer.eos_token_id]
    budget = max_length - len(c_ids)
    if budget < MIN_PROMPT_TOKENS:
        return None
    p_ids = _prompt_ids(tokenizer, prompt)
    if len(p_ids) > budget:
        p_ids = _truncated_prompt_ids(tokenizer, prompt, budget)
        if p_ids is None:
            return None
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids}


def _prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt as the chat template's user turn plus generation prompt (as it is without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return chat.encode_text(tokenizer, prompt)
    rendered = chat.render_marked(tokenizer, [{"role": "user", "content": prompt}], generation=True)
    return chat.encode(tokenizer, rendered, offsets=False)[0]


def _truncated_prompt_ids(tokenizer: Tokenizer, prompt: str, budget: int) -> list[int] | None:
    """Cut tokens from the middle of the prompt content until the formatted prompt fits in `budget`."""
    content = chat.encode_text(tokenizer, prompt)
    overhead = len(_prompt_ids(tokenizer, "")) if getattr(tokenizer, "chat_template", None) else 0
    keep = budget - overhead - 2
    for _ in range(4):  # re-tokenising the joined text can shift a token or two
        if keep < MIN_PROMPT_TOKENS:
            return None
        tail = min(48, keep // 3)
        text = tokenizer.decode(content[:keep - tail]) + " … " + tokenizer.decode(content[len(content) - tail:])
        ids = _prompt_ids(tokenizer, text)
        if len(ids) <= budget:
            return ids
        keep -= len(ids) - budget + 1
    return None


def encode_text(tokenizer: Tokenizer, text: str, max_length: int) -> list[dict[str, list[int]]]:
    """Plain text (`data.format: text`): every token trains; a long text becomes consecutive chunks."""
    ids = chat.encode_text(tokenizer, text) + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i:i + max_length], "labels": ids[i:i + max_length]}
            for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]


def encode_record(tok: Tokenizer, record: Record, max_length: int, train_on: str = "all_assistant",
                  special_tokens: str = "text") -> tuple[list[dict[str, list[int]]], int]:
    """A record's training examples (a conversation may make several, a text several chunks) and how
    many were dropped because they do not fit."""
    if special_tokens == "refuse":
        refuse_special_tokens(tok, record)
    if "messages" in record:
        return chat.encode_conversation(tok, record["messages"], max_length, train_on)
    if record.get("task") == "text":
        return encode_text(tok, record["completion"], max_length), 0
    e = encode(tok, record["prompt"], record["completion"], max_length)
    return ([e], 0) if e is not None else ([], 1)


def encode_records(records: list[Record], tok: Tokenizer, max_length: int, train_on: str = "all_assistant",
                   special_tokens: str = "text") -> tuple[list[dict], int]:
    """Every record's examples (keeping its id and template); and how many were dropped as too long."""
    if special_tokens not in SPECIAL_TOKENS:
        raise InstructuneError(f"data.special_tokens_in_content is {special_tokens!r}; use text (train on a "
                               "special-token string in the data as the text it reads) or refuse (stop at it).")
    out, dropped = [], 0
    for r in records:
        examples, lost = encode_record(tok, r, max_length, train_on, special_tokens)
        dropped += lost
        for k, e in enumerate(examples):
            out.append({"id": r["id"] if k == 0 else f"{r['id']}#{k}", "template": r.get("template"), **e})
    return out, dropped


def refuse_special_tokens(tok: Tokenizer, record: Record) -> None:
    """Stop at a record whose content holds one of the tokenizer's special-token strings, naming the field."""
    tokens = chat.control_tokens(tok)
    for where, text in formats.contents(record):
        found = formats.special_strings([text], tokens)
        if found:
            raise InstructuneError(
                f"record {record.get('id')}: {where} holds {', '.join(map(repr, sorted(found)))}, special token"
                f"{'s' * (len(found) > 1)} of this tokenizer, and data.special_tokens_in_content is refuse; remove "
                "them from the data, or set data.special_tokens_in_content: text to train on them as the plain text "
                "they read.")
