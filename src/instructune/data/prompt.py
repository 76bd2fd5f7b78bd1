"""A single prompt as the model reads it: the chat template's user turn, or the text as it is.

Whole conversations (several turns, which tokens train) are `chat`'s work; this is the one-turn case
that generation, scoring, few-shot evaluation and the forgetting probes share.
"""

from __future__ import annotations

from instructune.types import Tokenizer


def prompt_text(tokenizer: Tokenizer, prompt: str, raw: bool = False, system: str | None = None) -> str:
    """The text the model sees: the chat template's user turn plus generation prompt, or `prompt` as is."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
