"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAME = "full"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options:
    """Full fine-tuning has no options."""


def apply(model: Any, options: Options, tokenizer_path: str | None = None) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
