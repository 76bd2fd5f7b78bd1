"""Conversations to tokens, rendered by the model's chat template, with exactly the answers trained.

For each trained assistant turn i the template renders the conversation up to it twice:

    before_i = render(messages[:i], add_generation_prompt=True)   # ...<|im_start|>assistant\\n
    upto_i   = render(messages[:i + 1])                           # ...<|im_start|>assistant\\nHi!<|im_end|>\\n

The turn's trained characters are upto_i[len(before_i):] without the layout whitespace after its
end marker; a token trains when it starts inside them. So the answer and its end-of-turn token
carry labels; system and user turns, role markers and padding get -100. When every upto_i is a
prefix of the whole conversation's rendering, one example holds every turn. A template that
re-renders earlier turns differently (some drop earlier reasoning) gets one example per trained
turn instead, each exactly as the model saw the conversation at that turn.

A model without a chat template (a base model) takes a named one, `data.chat_format`, which is
saved with the trained adapter or model, so inference renders conversations the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError

IGNORE_INDEX = -100

FALLBACKS = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "plain": ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
              "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
              "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}### Assistant:\n{% endif %}"),
}
"""Chat formats for models without a chat template. `plain` needs no new tokens (the answer ends with
the model's own EOS); `chatml` writes ChatML's markers as text."""
CHAT_FORMATS = ("auto", *FALLBACKS)
TRAIN_ON = ("all_assistant", "last_assistant")


def use_chat_format(tok: Any, name: str) -> None:
    """Give `tok` the chat template `name` names; `auto` keeps the tokenizer's own."""
    if name not in CHAT_FORMATS:
        raise InstructuneError(f"unknown chat_format {name!r}; use one of {', '.join(CHAT_FORMATS)}.")
    if name != "auto":
        tok.chat_template = FALLBACKS[name]


def template_sha256(tok: Any) -> str | None:
    """A short hash of the chat template in use (None: the tokenizer has none)."""
    text = getattr(tok, "chat_template", None)
    return hashlib.sha256(text.encode()).hexdigest()[:16] if isinstance(text, str) else None


def saved_template(folder: str | Path) -> str | None:
    """The chat template saved in a model or adapter folder by `save_pretrained`, without loading it."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def use_saved_template(tok: Any, folder: str | Path) -> None:
    """Render as the adapter or model in `folder` trained: the chat template saved there (a base model trained
    with data.chat_format), if any, replaces the tokenizer's own."""
    saved = saved_template(folder)
    if saved and saved != getattr(tok, "chat_template", None):
        tok.chat_template = saved


def require_template(tok: Any, model: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise InstructuneError(
            f"{model} has no chat template, so conversations cannot be rendered for it; set `data.chat_format` "
            f"to one of {', '.join(FALLBACKS)} (it is saved with the trained model, so inference renders the same "
            "way).")


def render(tok: Any, messages: Sequence[dict], generation: bool = False) -> str:
    require_template(tok, getattr(tok, "name_or_path", None) or "this model")
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)


def examples(tok: Any, messages: list[dict], train_on: str = "all_assistant") -> list[tuple[str, list[tuple[int, int]]]]:
    """(text, trained character spans) of each example a conversation makes (see the module doc)."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    pieces = []
    for i in turns:
        before, upto = render(tok, messages[:i], generation=True), render(tok, messages[:i + 1])
        if not upto.startswith(before):
            raise InstructuneError(
                "the chat template renders an assistant turn differently from its own generation prompt, so the "
                f"answer's tokens cannot be found (prompt ends {before[-40:]!r}, turn starts "
                f"{upto[len(before) - 40:len(before)]!r}); set `data.chat_format` to one of {', '.join(FALLBACKS)}.")
        pieces.append((upto, (len(before), len(upto.rstrip()))))
    full = render(tok, messages)
    if all(full.startswith(upto) for upto, _ in pieces):
        return [(full, [span for _, span in pieces])]
    return [(upto, [span]) for upto, span in pieces]  # earlier turns re-rendered: each turn as it was seen


def encode_conversation(tok: Any, messages: list[dict], max_length: int,
                        train_on: str = "all_assistant") -> tuple[list[dict[str, Any]], int]:
    """(examples with input_ids and labels, examples dropped).

    An example longer than `max_length` is cut after the last trained turn that fits, never inside
    one (it is marked `cut`); when not even the first trained turn fits, it is dropped."""
    out, dropped = [], 0
    for text, spans in examples(tok, messages, train_on):
        ids, offsets = _tokens(tok, text)
        labels = [IGNORE_INDEX] * len(ids)
        ends = []
        for a, b in spans:
            inside = [k for k, (start, _) in enumerate(offsets) if a <= start < b]
            for k in inside:
                labels[k] = ids[k]
            if inside:
                ends.append(inside[-1] + 1)
        if len(ids) > max_length:
            fitting = [e for e in ends if e <= max_length]
            if not fitting:
                dropped += 1
                continue
            ids, labels = ids[:max(fitting)], labels[:max(fitting)]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        out.append({"input_ids": ids, "labels": labels, **({"cut": True} if len(ids) < len(offsets) else {})})
    return out, dropped


def _tokens(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise InstructuneError(f"{type(tok).__name__} cannot map tokens to characters, which finding the trained "
                               "tokens of a conversation needs; use a model with a fast (tokenizers) tokenizer."
                               ) from None
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def generation_prompt(tok: Any, messages: list[dict], exemplars: Sequence[list[dict]] = (),
                      chat_template: str | None = None) -> str:
    """The conversation up to its last assistant turn, ready for the answer; exemplar conversations
    (few-shot) come first as earlier turns, after the system message."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    shots = [m for conv in exemplars for m in conv if m["role"] != "system"]
    return tok.apply_chat_template([*system, *shots, *messages[len(system):-1]], tokenize=False,
                                   add_generation_prompt=True, chat_template=chat_template)
