"""BitFit (Ben Zaken et al. 2022), a selective method: biases, plus normalisation weights (llama-style
models have no biases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructune.methods.options import MethodOptions
from instructune.methods.selective import train_only

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "bitfit"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    """BitFit has no options."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    return train_only(model, lambda n: n.endswith(".bias") or "norm" in n.split(".")[-2], "bitfit")
