"""Data as users have it: alpaca records, chat conversations, plain text, besides templated tables.

    alpaca     {"instruction": ..., "input": ..., "output": ...}
               -> [user: instruction + "\\n\\n" + input (when non-empty), assistant: output]
    messages   {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}  (OpenAI)
    sharegpt   {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}
    text       {"text": ...}: every token trains (continued pre-training)
    template   any table, through templates (`data.templates`)

A conversation is a list of messages: an optional system message first, then user and assistant
turns in turn, ending with an assistant turn (the reference a model is scored against). A row
that breaks a rule is a RowError naming the field, so the data builder reports it with its file
and line, or counts it with `--skip-bad`. `auto` recognises alpaca, messages and sharegpt by
their fields, and says so. `special_strings` counts special-token strings (`<|im_start|>`) in
content, which `data build` and `data inspect` report: training encodes them as plain text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from instructune.data.templates import RowError, Template

FORMATS = ("auto", "template", "alpaca", "messages", "sharegpt", "text")
CONVERSATIONS = ("alpaca", "messages", "sharegpt")
"""Formats whose rows become conversations."""
EXPORTS = ("alpaca", "messages")
"""Formats `instructune data build --format` writes."""
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

SPECIAL_LIKE = re.compile(r"<\|[^|<>\s]{1,64}\|>")
"""How most chat vocabularies spell a special token (`<|im_start|>`, `<|eot_id|>`): what is counted in content
when no tokenizer says which strings are special."""

_FIELDS = {"alpaca": ("instruction", "output"), "messages": ("messages",), "sharegpt": ("conversations",),
           "text": ("text",)}


def recognise(rows: Sequence[dict], source: str) -> tuple[str, str]:
    """(format, why) of a file's rows by the fields of its first row; an error says what was seen."""
    from instructune.errors import InstructuneError

    first = rows[0] if rows else {}
    for fmt in CONVERSATIONS:
        if all(f in first for f in _FIELDS[fmt]):
            return fmt, f"fields {', '.join(f for f in first if f in _FIELDS[fmt] + ('input',))}"
    raise InstructuneError(
        f"{source}: cannot tell the format of its rows from their fields ({', '.join(first) or 'none'}). "
        "Alpaca rows have instruction/input/output, chat rows `messages` (role/content) or `conversations` "
        "(from/value). Set `data.format` (alpaca, messages, sharegpt, text), or give templates "
        "(`data.template_file`) to turn its fields into prompts.")


def template(fmt: str) -> Template:
    """The pseudo-template a format's records are built and scored with."""
    if fmt == "text":
        return Template(id="text", task="text", prompt="", completion="", choices=None, metrics=[], stop="eos",
                        description="plain text: every token trains", format="text")
    return Template(id=fmt, task="generation", prompt="", completion="", choices=None, metrics=["rouge", "bleu"],
                    stop="eos", description=f"{fmt} records: the last assistant turn is the reference",
                    format=fmt)


def conversation(row: dict, fmt: str) -> list[dict[str, str]]:
    """A row of a conversation format as checked messages [{role, content}, ...]."""
    if fmt == "alpaca":
        return _alpaca(row)
    field, role_key, text_key = ("messages", "role", "content") if fmt == "messages" else ("conversations", "from",
                                                                                         "value")
    turns = _field(row, field, fmt)
    if not isinstance(turns, list) or not turns:
        raise RowError(f"'{field}' must be a non-empty list of turns, got {_kind(turns)}",
                       kind=f"'{field}' not a list of turns")
    out = []
    for n, turn in enumerate(turns):
        where = f"{field}[{n}]"
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise RowError(f"{where} must be an object with '{role_key}' and '{text_key}', got {_kind(turn)}",
                           kind=f"turn without {role_key}/{text_key}")
        role = turn[role_key]
        if fmt == "sharegpt":
            if role not in SHAREGPT_ROLES:
                raise RowError(f"{where}.from is {role!r}; ShareGPT roles are {', '.join(SHAREGPT_ROLES)}",
                               kind="unknown role")
            role = SHAREGPT_ROLES[role]
        elif role not in ROLES:
            raise RowError(f"{where}.role is {role!r}; roles are {', '.join(ROLES)}", kind="unknown role")
        out.append({"role": role, "content": _text(turn[text_key], f"{where}.{text_key}")})
    check(out, field)
    return out


def check(messages: list[dict[str, str]], field: str = "messages") -> None:
    """System first (at most once), then user and assistant in turn, ending with the assistant."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for n, m in enumerate(body, start=len(messages) - len(body)):
        if m["role"] == "system":
            raise RowError(f"{field}[{n}] is a system message in the middle of the conversation; only the first "
                           "message may be a system message (merge it into that one, or into the user turn)",
                           kind="system message in the middle")
        expected = "user" if (n - len(messages) + len(body)) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RowError(f"{field}[{n}] is a {m['role']} turn where a {expected} turn belongs; turns must go user, "
                           "assistant, user, ... (fix the order or merge the two turns)", kind="roles out of order")
    if not body or body[-1]["role"] != "assistant":
        raise RowError(f"'{field}' has no assistant turn at its end, so nothing to learn or score; end each "
                       "conversation with the assistant's answer", kind="no final assistant turn")


def _alpaca(row: dict) -> list[dict[str, str]]:
    instruction = row.get("instruction")
    if instruction is None or (isinstance(instruction, str) and not instruction.strip()):
        what = "'input' without an 'instruction'" if str(row.get("input") or "").strip() else "no 'instruction'"
        raise RowError(f"an alpaca record needs a non-empty 'instruction'; this one has {what} (fields present: "
                       f"{', '.join(row)})", kind="alpaca record without instruction")
    prompt = _text(instruction, "instruction")
    extra = row.get("input")
    if extra is not None and str(extra).strip():
        prompt += "\n\n" + _text(extra, "input")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(_field(row, "output", "alpaca"),
                                                                                          "output")}]


def _field(row: dict, name: str, fmt: str) -> object:
    if name not in row:
        raise RowError(f"no '{name}' field, which {fmt} records have (fields present: {', '.join(row)}); a file "
                       "must hold one format throughout: split it, or convert these rows",
                       kind=f"not a {fmt} record (mixed formats?)")
    return row[name]


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where} must be text, got {_kind(value)}", kind="content not text")
    if not value.strip():
        raise RowError(f"{where} is empty; give it text or drop the message", kind="empty message")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def record(row: dict, row_id: str, fmt: str) -> dict:
    """One dataset record of a format: the conversation, and its context and reference as plain text."""
    if fmt == "text":
        text = _text(_field(row, "text", "text"), "text")
        return {"id": f"{row_id}/text", "task": "text", "template": "text", "prompt": "", "completion": text}
    messages = conversation(row, fmt)
    return {"id": f"{row_id}/{fmt}", "task": "generation", "template": fmt, "messages": messages,
            "prompt": plain(messages[:-1]), "completion": messages[-1]["content"]}


def plain(messages: list[dict[str, str]]) -> str:
    """A conversation as readable text (`user: ...`), for tables, token counts and reports."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def export(record: dict, fmt: str) -> dict:
    """A built record (templated or conversation) in an export format."""
    messages = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                          {"role": "assistant", "content": record["completion"]}]
    if fmt == "messages":
        return {"id": record["id"], "messages": messages}
    if len(messages) != 2 or messages[0]["role"] != "user":
        return {"id": record["id"], "instruction": plain(messages[:-1]), "input": "",
                "output": messages[-1]["content"]}
    return {"id": record["id"], "instruction": messages[0]["content"], "input": "", "output": messages[1]["content"]}


def contents(record: dict) -> list[tuple[str, str]]:
    """(field, text) of what a built record's model reads and writes: each message, else prompt and completion."""
    if "messages" in record:
        return [(f"messages[{n}].content", m["content"]) for n, m in enumerate(record["messages"])]
    return [(name, record[name]) for name in ("prompt", "completion") if isinstance(record.get(name), str)]


def special_strings(texts: Iterable[str], tokens: Sequence[str] | None = None) -> Counter:
    """How often each special-token string occurs in `texts`: a tokenizer's own (`tokens`), or anything
    spelt like one (`SPECIAL_LIKE`)."""
    if tokens is not None and not tokens:
        return Counter()
    pattern = _any_of(tuple(tokens)) if tokens else SPECIAL_LIKE
    return Counter(m.group() for text in texts for m in pattern.finditer(text))


def special_note(counts: dict[str, dict[str, int]]) -> str | None:
    """A line for `data build` and `data inspect` on the special-token strings found, per file (None: none)."""
    if not counts:
        return None
    found = "; ".join(f"{file}: " + ", ".join(f"{s} x{n}" for s, n in c.items()) for file, c in counts.items())
    return (f"warning: content holds special-token strings ({found}); training reads them as the plain text they "
            "are, never as control tokens (data.special_tokens_in_content: refuse stops at them instead)")


@lru_cache(maxsize=16)
def _any_of(strings: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, sorted(strings, key=len, reverse=True))))
