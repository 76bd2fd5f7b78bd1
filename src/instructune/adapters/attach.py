"""Putting a saved adapter on a model, after checking it was trained on that base architecture.

`attach_adapter` wraps a loaded model; `load_adapted` loads the base, wraps it and renders prompts with
the chat template saved beside the adapter (a base model trained with `data.chat_format`).
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from instructune.adapters.registry import check_base, find_adapter_dir
from instructune.data import chat_template
from instructune.models import load_model
from instructune.types import Model, Tokenizer


def attach_adapter(model: Model, adapter: str | Path, name: str = "default") -> PeftModel:
    """Wrap `model` with a saved peft adapter (its folder or a run's), refusing one made for another base."""
    folder = find_adapter_dir(adapter)
    check_base(folder, model.config, getattr(model, "name_or_path", "") or "the loaded model")
    return PeftModel.from_pretrained(model, str(folder), adapter_name=name)


def load_adapted(base: str, adapter: str | Path, dtype: str = "float32",
                 trust_remote_code: bool = False) -> tuple[Model, Tokenizer]:
    """(model, tokenizer): `base` with the adapter on it, in eval mode, and the chat template it trained with."""
    model, tok = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
    folder = find_adapter_dir(adapter)
    chat_template.use_saved_template(tok, folder)
    return attach_adapter(model, folder).eval(), tok
