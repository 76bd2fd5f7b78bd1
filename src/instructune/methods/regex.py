"""Regex, a selective method: parameters whose names match any of the given regular expressions train."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from instructune.errors import InstructuneError
from instructune.methods.options import MethodOptions
from instructune.methods.selective import train_only

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "regex"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    patterns: list[str] = field(default_factory=list)
    """Parameter-name regular expressions that train (e.g. ['mlp\\.down_proj'])."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    if not options.patterns:
        raise InstructuneError("method regex needs method.patterns, e.g. patterns: ['mlp\\.down_proj'].")
    try:
        compiled = [re.compile(p) for p in options.patterns]
    except re.error as e:
        raise InstructuneError(f"method.patterns: {e.pattern!r} is not a valid regular expression ({e}).") from None
    return train_only(model, lambda n: any(c.search(n) for c in compiled), f"regex {options.patterns}")
