"""BitFit (Ben Zaken et al. 2022), a selective method: biases, plus normalisation weights (llama-style
models have no biases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instructune.methods.selective import train_only

NAME = "bitfit"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options:
    """BitFit has no options."""


def apply(model: Any, options: Options, tokenizer_path: str | None = None) -> Any:
    return train_only(model, lambda n: n.endswith(".bias") or "norm" in n.split(".")[-2], "bitfit")
