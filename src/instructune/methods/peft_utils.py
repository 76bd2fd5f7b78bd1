"""What the peft-backed methods share: target checks and wrapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import PeftConfig, get_peft_model

from instructune.errors import InstructuneError

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel


def check_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Every target must name a module of the model; the error lists the names that exist."""
    leaves = {name.split(".")[-1] for name, mod in model.named_modules() if not list(mod.children())}
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise InstructuneError(f"method.targets {missing} name no module of this model; modules that can be "
                               f"targeted: {', '.join(sorted(leaves))}.")
    return targets


def wrap(model: PreTrainedModel, config: PeftConfig) -> nn.Module:
    """The peft model for `config`; peft's refusal becomes an error that names another method to try."""
    try:
        return get_peft_model(model, config)
    except (ValueError, NotImplementedError, TypeError) as e:
        raise InstructuneError(f"peft cannot apply {type(config).__name__} to {model.config.model_type}: {e}. "
                               "Choose another method (lora works on every model here).") from None
