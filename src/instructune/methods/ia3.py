"""IA3 (Liu et al. 2022) through peft, an additive method: learned vectors that rescale keys, values
and MLP activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft import IA3Config

from instructune.methods.options import MethodOptions
from instructune.methods.peft_utils import check_targets, wrap

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "ia3"
PEFT = True
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    targets: list[str] = field(default_factory=list)
    """Module names to rescale (empty = k_proj, v_proj, down_proj)."""
    feedforward: list[str] = field(default_factory=list)
    """Which of the targets are feed-forward layers, rescaled on their input (empty = down_proj)."""


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    targets = check_targets(model, options.targets or ["k_proj", "v_proj", "down_proj"])
    ff = [t for t in (options.feedforward or ["down_proj"]) if t in targets]
    return wrap(model, IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=ff))
