"""Fine-tuning methods, one small module each, in one registry.

A method takes the loaded model and its plain options and returns the model to train with
exactly the right parameters requiring grad. PEFT families come from peft, never re-written.

| family | names |
|---|---|
| full | `full` |
| selective | `bitfit`, `last_n`, `regex` |
| reparameterization | `lora` (DoRA with `dora: true`) |
| additive | `prompt_tuning`, `ia3`, `prefix_tuning` |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from instructune.methods import additive, full, lora, selective

METHODS: dict[str, Callable[..., Any]] = {
    "full": full.apply,
    "bitfit": selective.bitfit,
    "last_n": selective.last_n,
    "regex": selective.regex,
    "lora": lora.apply,
    "prompt_tuning": additive.prompt_tuning,
    "ia3": additive.ia3,
    "prefix_tuning": additive.prefix_tuning,
}
PEFT_METHODS = {"lora", "prompt_tuning", "ia3", "prefix_tuning"}
PROMPT_LEARNING = {"prompt_tuning", "prefix_tuning"}  # these prepend virtual tokens


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
