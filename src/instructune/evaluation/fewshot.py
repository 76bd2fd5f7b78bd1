"""Few-shot prompts: exemplars from the train split, shown as chat turns or as plain text blocks.

An instruct model reads exemplars best as earlier user/assistant turns of the conversation; a
base model (no chat template) reads "prompt\\ncompletion" blocks separated by blank lines.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from instructune.data.prompt import prompt_text
from instructune.errors import InstructuneError
from instructune.types import Tokenizer


def pick_exemplars(train_records: Sequence[dict[str, Any]], k: int, seed: int | str,
                   exclude_id: Any = None, stratify: bool = True) -> list[dict[str, Any]]:
    """k records from the train split, the same for the same seed.

    With `stratify` and labelled records, labels take turns (in a seeded order), so a 2-shot
    prompt of a binary task shows both labels and 1-shot prompts vary their label from seed to
    seed. The picked exemplars are shuffled so the last one (which the model weighs most) is not
    always the same label.
    """
    if k <= 0:
        return []
    pool = [r for r in train_records if exclude_id is None or r.get("id") != exclude_id]
    if k > len(pool):
        raise InstructuneError(f"{k} shots asked for, but the train split has only {len(pool)} usable records; "
                               "lower `shots` or use a larger train split.")
    rng = random.Random(seed)
    if not (stratify and all("label" in r for r in pool)):
        return rng.sample(pool, k)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in pool:
        groups.setdefault(str(r["label"]), []).append(r)
    labels = sorted(groups)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(groups[label])
    picked: list[dict[str, Any]] = []
    while len(picked) < k:
        for label in labels:
            if groups[label] and len(picked) < k:
                picked.append(groups[label].pop())
    rng.shuffle(picked)
    return picked


def fewshot_prompt(prompt: str, exemplars: Sequence[tuple[str, str]]) -> str:
    """Plain-text few-shot: "prompt\\ncompletion" blocks separated by blank lines, then "prompt\\n".

    The final block has the exemplars' shape with the completion left to the model, so a scored
    or generated answer sits where the exemplars' answers do. Without exemplars, `prompt` as is.
    """
    if not exemplars:
        return prompt
    blocks = [f"{p}\n{c}" for p, c in exemplars]
    return "\n\n".join([*blocks, f"{prompt}\n"])


def fewshot_messages(prompt: str, exemplars: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat few-shot: each exemplar a user turn and an assistant turn, then the prompt as the last user turn."""
    messages = []
    for p, c in exemplars:
        messages += [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
    return [*messages, {"role": "user", "content": prompt}]


def format_prompt(tokenizer: Tokenizer, prompt: str, exemplars: Sequence[tuple[str, str]] = (),
                  raw: bool = False) -> str:
    """The text the model sees: chat turns when the tokenizer has a chat template (and not `raw`), text blocks otherwise."""
    if not exemplars:
        return prompt_text(tokenizer, prompt, raw)
    if raw or not getattr(tokenizer, "chat_template", None):
        return fewshot_prompt(prompt, exemplars)
    return tokenizer.apply_chat_template(fewshot_messages(prompt, exemplars), tokenize=False,
                                         add_generation_prompt=True)
