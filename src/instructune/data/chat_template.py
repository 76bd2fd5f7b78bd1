"""Which chat template renders a conversation, and where it is saved.

A model without a chat template (a base model) takes a named one, `data.chat_format`, which is
saved with the trained adapter or model (`chat_template.jinja`, or `tokenizer_config.json` in older
folders), so inference renders conversations the same way:

    use_chat_format(tok, "plain")        # training: a base model gets the `plain` format
    use_saved_template(tok, "run/adapter")  # inference: render as the adapter trained
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from instructune.errors import InstructuneError
from instructune.types import Tokenizer

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


def use_chat_format(tok: Tokenizer, name: str) -> None:
    """Give `tok` the chat template `name` names; `auto` keeps the tokenizer's own."""
    if name not in CHAT_FORMATS:
        raise InstructuneError(f"unknown chat_format {name!r}; use one of {', '.join(CHAT_FORMATS)}.")
    if name != "auto":
        tok.chat_template = FALLBACKS[name]


def template_sha256(tok: Tokenizer) -> str | None:
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


def use_saved_template(tok: Tokenizer, folder: str | Path) -> None:
    """Render as the adapter or model in `folder` trained: the chat template saved there (a base model trained
    with data.chat_format), if any, replaces the tokenizer's own."""
    saved = saved_template(folder)
    if saved and saved != getattr(tok, "chat_template", None):
        tok.chat_template = saved


def require_template(tok: Tokenizer | None, model: str) -> None:
    """Refuse a tokenizer with no chat template (None: the model's folder has none), naming the fix."""
    if not getattr(tok, "chat_template", None):
        raise InstructuneError(
            f"{model} has no chat template, so conversations cannot be rendered for it; set `data.chat_format` "
            f"to one of {', '.join(FALLBACKS)} (it is saved with the trained model, so inference renders the same "
            "way).")
