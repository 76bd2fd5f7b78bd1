"""LoRA (Hu et al. 2021) through peft: x -> W0 x + (alpha / r) B A x, A random, B zero at init.

`dora: true` switches to DoRA (Liu et al. 2024): magnitude and direction trained apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft import LoraConfig

from instructune.methods.options import MethodOptions
from instructune.methods.peft_utils import check_targets, wrap

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

NAME = "lora"
PEFT = True
PROMPT_LEARNING = False


@dataclass
class Options(MethodOptions):
    r: int = 8
    """Rank of the update B A."""
    alpha: int = 16
    """Scale alpha (the update is multiplied by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter's input, in [0, 1)."""
    targets: list[str] = field(default_factory=list)
    """Module names to adapt (empty = q_proj, v_proj)."""
    dora: bool = False
    """Use DoRA (weight-decomposed LoRA)."""

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"r must be at least 1, got {self.r}")
        if self.alpha <= 0:
            out.append(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            out.append(f"dropout must be in [0, 1), got {self.dropout}")
        return out


def apply(model: PreTrainedModel, options: Options, tokenizer_path: str | None = None) -> nn.Module:
    targets = check_targets(model, options.targets or ["q_proj", "v_proj"])
    cfg = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=targets,
                     use_dora=options.dora, task_type="CAUSAL_LM")
    return wrap(model, cfg)
