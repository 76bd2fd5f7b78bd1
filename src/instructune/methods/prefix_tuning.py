"""Prefix tuning (Li and Liang 2021) through peft, an additive method: trainable key/value prefixes in
every layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft import PrefixTuningConfig

from instructune.methods.options import PromptLearningOptions
from instructune.methods.peft_utils import wrap

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "prefix_tuning"
PEFT = True
PROMPT_LEARNING = True


@dataclass
class Options(PromptLearningOptions):
    """Prefix tuning's options: `num_virtual_tokens` only."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    return wrap(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens))
