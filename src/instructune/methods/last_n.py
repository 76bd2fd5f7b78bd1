"""Last N blocks, a selective method: the last N transformer blocks (and the final norm) train."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructune.errors import InstructuneError
from instructune.methods.options import MethodOptions
from instructune.methods.selective import train_only

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "last_n"
PEFT = False
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    last_n: int = 2
    """How many final transformer blocks train."""

    def problems(self) -> list[str]:
        return [f"last_n must be at least 1, got {self.last_n}"] if self.last_n < 1 else []


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    layers = model.config.num_hidden_layers
    if not 1 <= options.last_n <= layers:
        raise InstructuneError(f"method.last_n must be between 1 and {layers} (the model's blocks), got "
                               f"{options.last_n}.")
    first = layers - options.last_n

    def keep(n: str) -> bool:
        m = re.search(r"\.layers\.(\d+)\.", n)
        return (m is not None and int(m.group(1)) >= first) or n.startswith("model.norm.")
    return train_only(model, keep, f"last_n={options.last_n}")
