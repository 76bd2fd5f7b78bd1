from __future__ import annotations

import threading
from pathlib import Path

import pytest

from instructune.adapters.merge import random_lora
from instructune.adapters.registry import register_adapter
from instructune.data.prompt import prompt_text
from instructune.errors import InstructuneError
from instructune.evaluation.generate import generate
from instructune.models import load_model
from instructune.serving.hotswap import AdapterSet
from instructune.testing import tiny_model, tiny_tokenizer

TARGETS = ("o_proj", "down_proj")  # on the random tiny model these give readable, distinct greedy outputs
PROMPTS = ["Classify the sentiment of this review", "Write a headline for this article"]


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {name: random_lora(tiny_model_dir, root / name, seed=seed, targets=TARGETS)
            for name, seed in (("one", 1), ("two", 2))}


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, loras: dict[str, Path]) -> dict[str | None, list[str]]:
    """Greedy completions of each prompt by a freshly loaded base and by each adapter alone."""
    from peft import PeftModel

    out: dict[str | None, list[str]] = {}
    for name in (None, *loras):
        model, tok = load_model(str(tiny_model_dir))
        if name:
            model = PeftModel.from_pretrained(model, str(loras[name])).eval()
        out[name] = generate(model, tok, [prompt_text(tok, p) for p in PROMPTS], max_new_tokens=8)
    return out


def test_swapping_matches_each_adapter_alone_without_reloading(tiny_model_dir: Path, loras: dict[str, Path],
                                                               expected: dict[str | None, list[str]]) -> None:
    aset = AdapterSet(str(tiny_model_dir), loras)
    base, weight = aset.base_model, aset.base_model.get_input_embeddings().weight
    texts = [prompt_text(aset.tokenizer, p) for p in PROMPTS]
    assert len({tuple(v) for v in expected.values()}) == 3, "base and adapters must answer differently"
    for name in ["one", "two", None, "two", "one", None, "one"]:
        assert aset.generate(texts, name, max_new_tokens=8) == expected[name]
    assert aset.model.base_model.model is base  # one base model, wrapped in place
    assert base.get_input_embeddings().weight is weight
    assert all(not p.requires_grad for p in aset.model.parameters())


def test_registered_names_and_concurrent_callers(tiny_model_dir: Path, loras: dict[str, Path],
                                                 expected: dict[str | None, list[str]]) -> None:
    register_adapter("one.v1", loras["one"])  # '.' is fine in a registry name, not in a peft adapter name
    aset = AdapterSet(str(tiny_model_dir), {"one.v1": "one.v1", "two": loras["two"]})
    texts = [prompt_text(aset.tokenizer, p) for p in PROMPTS]
    results: dict[int, list[str]] = {}
    plan = ["one.v1", "two", None, "two", "one.v1", None]

    def call(i: int) -> None:
        results[i] = aset.generate(texts, plan[i], max_new_tokens=8)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    want = {"one.v1": expected["one"], "two": expected["two"], None: expected[None]}
    assert [results[i] for i in range(len(plan))] == [want[name] for name in plan]


def test_adapter_for_another_base_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    tok = tiny_tokenizer()
    tiny_model(len(tok), layers=3).save_pretrained(wide)
    tok.save_pretrained(wide)
    adapter = random_lora(wide, tmp_path / "wide-lora")
    with pytest.raises(InstructuneError) as err:
        AdapterSet(str(tiny_model_dir), {"w": adapter})
    assert "3 layers" in str(err.value) and "2 layers" in str(err.value) and str(wide) in str(err.value)


def test_unknown_adapter_and_taken_name(tiny_model_dir: Path, loras: dict[str, Path]) -> None:
    aset = AdapterSet(str(tiny_model_dir), {"one": loras["one"]})
    with pytest.raises(InstructuneError, match="unknown adapter 'three'; loaded: one"):
        aset.generate(["hi"], "three")
    with pytest.raises(InstructuneError, match="already taken"):
        aset.add("one", loras["two"])


def test_adapters_of_different_types_serve_on_one_base(tiny_model_dir: Path, loras: dict[str, Path],
                                                       expected: dict[str | None, list[str]], tmp_path: Path) -> None:
    """A LoRA and an IA3 adapter side by side: each answers as it does alone, and the base as the base."""
    import torch
    from peft import IA3Config, PeftModel, get_peft_model

    model, tok = load_model(str(tiny_model_dir))
    ia3 = get_peft_model(model, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                          feedforward_modules=["down_proj"], task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in ia3.named_parameters():
            if "ia3_l" in n:
                p.copy_(3 * torch.randn(p.shape, generator=gen))  # far from the identity it starts at
    ia3.save_pretrained(str(tmp_path / "ia3"))
    model, tok = load_model(str(tiny_model_dir))
    alone = PeftModel.from_pretrained(model, str(tmp_path / "ia3")).eval()
    want_ia3 = generate(alone, tok, [prompt_text(tok, p) for p in PROMPTS], max_new_tokens=8)
    assert want_ia3 != expected[None]

    aset = AdapterSet(str(tiny_model_dir), {"one": loras["one"], "scaled": tmp_path / "ia3"})
    texts = [prompt_text(aset.tokenizer, p) for p in PROMPTS]
    for name, want in [("scaled", want_ia3), ("one", expected["one"]), (None, expected[None]),
                       ("scaled", want_ia3), (None, expected[None])]:
        assert aset.generate(texts, name, max_new_tokens=8) == want, name
    assert sorted(aset.groups) == ["IA3", "LORA"]
