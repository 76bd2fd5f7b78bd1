"""Merging an adapter into its base: one full model folder that plain transformers loads.

`merge_adapter` folds the adapter into the base weights (`W + (alpha/r) B A`, peft's
`merge_and_unload`). A tied embedding/lm_head pair is untied first, so a delta learnt on one side
is not written into the other.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from instructune.adapters.registry import adapter_base, check_base, describe, resolve_adapter, swap_in
from instructune.data import chat_template
from instructune.errors import InstructuneError
from instructune.models import MODEL_PACKS, load_model, pack_dir
from instructune.paths import refuse_overwrite
from instructune.types import JSON, Model


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32",
                  overwrite: bool = False) -> JSON:
    """Write base + adapter as one full model folder (safetensors + tokenizer) that plain transformers loads.

    The merged logits are checked against the unmerged adapter's on a probe sequence before
    anything is written; the folder appears by rename, whole or not at all.
    """
    folder = resolve_adapter(adapter)
    out = Path(out).expanduser()
    base = base or adapter_base(folder)[0]
    base_dir = pack_dir(base) if base in MODEL_PACKS else base  # a pack is read from its folder in the cache
    refuse_overwrite("--out", out, [out], {"adapter": folder, "--base": base_dir},
                     "give --out a new folder, outside the adapter and the base model", whole=True)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InstructuneError(f"{out} already exists and is not empty; pick a new --out folder or pass --force.")
    if not base:
        raise InstructuneError(f"{folder}/adapter_config.json names no base model; pass --base MODEL.")
    model, tok = load_model(base, dtype=dtype)
    check_base(folder, model.config, base)
    chat_template.use_saved_template(tok, folder)  # the merged model renders prompts as the adapter trained
    tied = _untie(model)
    peft_model = PeftModel.from_pretrained(model, str(folder)).eval()
    probe = torch.arange(3, 3 + min(32, model.config.vocab_size - 3)).unsqueeze(0)  # (1, T), ids past the specials
    with torch.no_grad():
        before = peft_model(probe).logits
        merged = peft_model.merge_and_unload()
        if tied and torch.equal(merged.get_output_embeddings().weight, merged.get_input_embeddings().weight):
            _retie(merged)  # the adapter left the pair alone: keep the compact, tied layout
        diff = float((merged(probe).logits - before).abs().max())
    tol = 1e-3 if dtype == "float32" else 1e-1
    if diff > tol:
        raise InstructuneError(f"merging {folder} changes the logits by {diff:.2e} (more than {tol:g}), so this "
                               "adapter cannot be merged exactly; serve it unmerged (`instructune serve --adapters`).")
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        merged.save_pretrained(staging)
        tok.save_pretrained(staging)
        info = {"adapter": str(adapter), "base": base, "method": describe(folder)["method"],
                "tied_embeddings": bool(merged.config.tie_word_embeddings), "max_logit_diff": diff}
        (staging / "instructune-merge.json").write_text(json.dumps(info, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**info, "path": str(out)}


def _untie(model: Model) -> bool:
    """Give lm_head its own copy of a tied embedding matrix; True if the pair was tied.

    peft applies an lm_head delta on the output path only; merged into a shared matrix it
    would leak into the input embeddings as well.
    """
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or in_emb is None or out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
        return False
    out_emb.weight = torch.nn.Parameter(in_emb.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    return True


def _retie(model: Model) -> None:
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.tie_word_embeddings = True


def random_lora(base: str | Path, out: str | Path, seed: int = 0, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                r: int = 4, scale: float = 0.5) -> Path:
    """A LoRA adapter with random nonzero B, so its effect shows at once: for tests, benchmarks, smoke runs.

    A zero-initialised B (peft's default) would make every adapter equal the base.
    """
    model, _ = load_model(str(base))
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return Path(out)
