"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructune.methods.options import MethodOptions

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "full"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    """Full fine-tuning has no options."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
