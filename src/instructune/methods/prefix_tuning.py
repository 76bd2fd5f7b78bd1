"""Prefix tuning (Li and Liang 2021) through peft, an additive method: trainable key/value prefixes in
every layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peft import PrefixTuningConfig

from instructune.methods.peft_utils import wrap

NAME = "prefix_tuning"
PEFT = True
PROMPT_LEARNING = True


@dataclass
class Options:
    num_virtual_tokens: int = 20
    """Number of virtual tokens."""

    def problems(self) -> list[str]:
        n = self.num_virtual_tokens
        return [f"num_virtual_tokens must be at least 1, got {n}"] if n < 1 else []


def apply(model: Any, options: Options, tokenizer_path: str | None = None) -> Any:
    return wrap(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens))
