"""Additive methods through peft: new parameters beside frozen weights.

- `prompt_tuning` (Lester et al. 2021): trainable virtual-token embeddings before the input,
  optionally initialised from the embedding of a text.
- `prefix_tuning` (Li and Liang 2021): trainable key/value prefixes in every layer.
- `ia3` (Liu et al. 2022): learned vectors that rescale keys, values and MLP activations.
"""

from __future__ import annotations

from typing import Any

from instructune.methods.peft_utils import check_targets, wrap


def prompt_tuning(model: Any, num_virtual_tokens: int = 20, init_text: str | None = None,
                  tokenizer_path: str | None = None, **_: Any) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    kwargs: dict[str, Any] = {}
    if init_text:
        kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": init_text,
                  "tokenizer_name_or_path": tokenizer_path}
    return wrap(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, **kwargs))


def prefix_tuning(model: Any, num_virtual_tokens: int = 20, **_: Any) -> Any:
    from peft import PrefixTuningConfig

    return wrap(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens))


def ia3(model: Any, targets: list[str] | None = None, feedforward: list[str] | None = None, **_: Any) -> Any:
    from peft import IA3Config

    targets = check_targets(model, targets or ["k_proj", "v_proj", "down_proj"])
    ff = [t for t in (feedforward or ["down_proj"]) if t in targets]
    return wrap(model, IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=ff))
