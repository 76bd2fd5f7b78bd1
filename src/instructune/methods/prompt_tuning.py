"""Prompt tuning (Lester et al. 2021) through peft, an additive method: trainable virtual-token
embeddings before the input, optionally initialised from the embedding of a text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft import PromptTuningConfig, PromptTuningInit

from instructune.methods.options import PromptLearningOptions
from instructune.methods.peft_utils import wrap

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "prompt_tuning"
PEFT = True
PROMPT_LEARNING = True


@dataclass
class Options(PromptLearningOptions):
    init_text: str | None = None
    """Initialise the virtual tokens from this text's embedding."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    text = options.init_text or None  # no text: peft's random initialisation
    return wrap(model, PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=text, tokenizer_name_or_path=tokenizer_path if text else None))
