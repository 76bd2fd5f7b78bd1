"""LoRA (Hu et al. 2021) through peft: x -> W0 x + (alpha / r) B A x, A random, B zero at init.

`dora: true` switches to DoRA (Liu et al. 2024): magnitude and direction trained apart.
"""

from __future__ import annotations

from typing import Any

from instructune.methods.peft_utils import check_targets, wrap


def apply(model: Any, r: int = 8, alpha: int = 16, dropout: float = 0.05, targets: list[str] | None = None,
          dora: bool = False, **_: Any) -> Any:
    from peft import LoraConfig

    targets = check_targets(model, targets or ["q_proj", "v_proj"])
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, use_dora=dora,
                     task_type="CAUSAL_LM")
    return wrap(model, cfg)
