"""Prompt tuning (Lester et al. 2021) through peft, an additive method: trainable virtual-token
embeddings before the input, optionally initialised from the embedding of a text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peft import PromptTuningConfig, PromptTuningInit

from instructune.methods.peft_utils import wrap

NAME = "prompt_tuning"
PEFT = True
PROMPT_LEARNING = True


@dataclass
class Options:
    num_virtual_tokens: int = 20
    """Number of virtual tokens."""
    init_text: str | None = None
    """Initialise the virtual tokens from this text's embedding."""

    def problems(self) -> list[str]:
        n = self.num_virtual_tokens
        return [f"num_virtual_tokens must be at least 1, got {n}"] if n < 1 else []


def apply(model: Any, options: Options, tokenizer_path: str | None = None) -> Any:
    kwargs: dict[str, Any] = {}
    if options.init_text:
        kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": options.init_text,
                  "tokenizer_name_or_path": tokenizer_path}
    return wrap(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens,
                                          **kwargs))
