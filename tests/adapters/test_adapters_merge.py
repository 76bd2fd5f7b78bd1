from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from instructune.adapters.merge import random_lora
from instructune.adapters.registry import register_adapter
from instructune.cli import main

TEXT = "The movie was wonderful, moving and funny."


def logits_of(model: object, tok: object) -> torch.Tensor:
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("o_proj", "lm_head")])
def test_merged_model_matches_unmerged_and_loads_with_plain_transformers(
        targets: tuple[str, ...], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register_adapter("m", random_lora(tiny_model_dir, tmp_path / "adapter", seed=3, targets=targets))
    assert main(["adapters", "merge", "m", "--out", str(tmp_path / "merged")]) == 0
    assert "merged 'm'" in capsys.readouterr().out

    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")  # the tokenizer travels with the model
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_embed = base.get_input_embeddings().weight.detach().clone()
    unmerged = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    expected, got = logits_of(unmerged, tok), logits_of(merged, tok)
    assert (got - expected).abs().max() < 1e-4
    assert (got - logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)).abs().max() > 1e-2

    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    # the input embeddings stay the base's, whatever the adapter did to lm_head
    assert torch.equal(merged.get_input_embeddings().weight, base_embed)
    if "lm_head" in targets:  # a delta on the output side only: the pair is untied, both matrices saved
        assert not merged.config.tie_word_embeddings and "lm_head.weight" in keys
        assert not torch.equal(merged.get_output_embeddings().weight, base_embed)
    else:  # untouched: still tied, one matrix on disk
        assert merged.config.tie_word_embeddings and "lm_head.weight" not in keys
        assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()


def test_merge_refuses_a_non_empty_out(tiny_model_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    adapter = random_lora(tiny_model_dir, tmp_path / "adapter", seed=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["adapters", "merge", str(adapter), "--out", str(tmp_path / "out")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_merged_model_keeps_the_chat_template_the_adapter_trained_with(tiny_model_dir: Path, tmp_path: Path) -> None:
    # a base model trained with data.chat_format saves that template with its adapter; merging used to write the
    # base's tokenizer, so the merged model rendered prompts differently from how it was trained
    from instructune.data.chat_template import FALLBACKS, saved_template
    from instructune.data.prompt import prompt_text
    from instructune.models import load_model

    adapter = random_lora(tiny_model_dir, tmp_path / "adapter", seed=3)
    (adapter / "chat_template.jinja").write_text(FALLBACKS["plain"], encoding="utf-8")
    assert saved_template(tiny_model_dir) != FALLBACKS["plain"]
    assert main(["adapters", "merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    assert saved_template(tmp_path / "merged") == FALLBACKS["plain"]
    _, tok = load_model(str(tmp_path / "merged"))
    assert prompt_text(tok, "Hi").startswith("### User:")
