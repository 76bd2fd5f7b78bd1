"""Shared fixtures: a private cache root, tiny models built in the session, the real model on demand, and toy
tasks (movie reviews to classify, news stories to title)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from instructune.testing import save_tiny

# Tests never reach a model hub: set before any fixture imports huggingface_hub (it reads this at import).
os.environ["HF_HUB_OFFLINE"] = "1"

# The real model pack is cached across test sessions (pulling it costs ~30 s); everything else is per session.
REAL_HOME = Path(os.environ.get("INSTRUCTUNE_HOME") or Path.home() / ".cache" / "instructune")


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own empty cache unless it asks for the real one."""
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # precision auto means fp32 in tests, whatever the CPU: pinned numbers stay comparable across machines
    # (tests/test_hardware.py unsets it to test the measured choice)
    monkeypatch.setenv("INSTRUCTUNE_AUTO_PRECISION", "fp32")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-dim llama with a byte-level BPE tokenizer and a ChatML chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny-chat"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_plain_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model with a tokenizer that has no chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama with its own output layer, so it answers with text (a tied one only ever repeats the
    last token: a newline): a distillation teacher."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from instructune.testing import tiny_tokenizer

    tok, folder = tiny_tokenizer(True), tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
                     ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def real_home() -> Path:
    REAL_HOME.mkdir(parents=True, exist_ok=True)
    return REAL_HOME


@pytest.fixture
def real_model(real_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default pack (SmolLM2-135M-Instruct), pulled into the shared cache once."""
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(real_home))
    from instructune.models import pull_model

    pull_model("smollm2-135m-instruct")
    return "smollm2-135m-instruct"

TOY_TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    metrics: [accuracy, f1]
    prompt: "Review: {{ text }}\\nPositive or negative?"
  - id: title
    task: summarization
    metrics: [rouge]
    prompt: "Give a title: {{ text }}"
    completion: "{{ title }}"
"""


@pytest.fixture
def toy_tasks(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(reviews JSONL with text/label/title, news JSONL with text/title, the templates YAML `mood` + `title`)."""
    rng = random.Random(0)
    good, bad = ["great", "fine", "good"], ["dull", "bad", "poor"]
    rows = [{"text": f"a {rng.choice(good if i % 2 else bad)} film {i}", "label": "pos" if i % 2 else "neg",
             "title": f"film {i}"} for i in range(80)]
    target = tmp_path / "reviews.jsonl"
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keep = tmp_path / "news.jsonl"
    keep.write_text("".join(json.dumps({"text": f"news story {i} about the city council and the budget",
                                        "title": f"council budget {i}"}) + "\n" for i in range(60)))
    tpl = tmp_path / "t.yaml"
    tpl.write_text(TOY_TEMPLATES)
    return target, keep, tpl
