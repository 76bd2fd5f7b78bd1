"""Every method on a tiny model: the loss falls, trained weights change, frozen ones do not."""

from __future__ import annotations

import copy

import pytest
import torch

from instructune.errors import InstructuneError
from instructune.methods import METHODS, MethodConfig, count_parameters, lora, prompt_tuning
from instructune.methods.options import MethodOptions, PromptLearningOptions
from instructune.testing import tiny_model
from instructune.training.batching import collate, completion_loss_sum

LR = {"full": 3e-3, "bitfit": 2e-1, "last_n": 1e-2, "regex": 1e-2, "lora": 3e-2, "prompt_tuning": 3e-1,
      "ia3": 3e-1, "prefix_tuning": 3e-1}
OPTIONS = {"regex": {"patterns": [r"mlp\.down_proj"]}, "last_n": {"last_n": 1}, "lora": {"dropout": 0.0},
           "prompt_tuning": {"num_virtual_tokens": 4}, "prefix_tuning": {"num_virtual_tokens": 4}}
PROMPT_LEARNING = {"prompt_tuning", "prefix_tuning"}


def toy_batch(vocab: int = 64) -> dict[str, torch.Tensor]:
    """Prompts of random tokens; the completion is a fixed function of the first prompt token."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8):
        prompt = torch.randint(4, vocab, (6,), generator=g).tolist()
        answer = [prompt[0] % 7 + 10, 2]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * 6 + answer})
    return collate(rows, pad_id=2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_only_what_it_should(name: str) -> None:
    base = tiny_model(vocab_size=64, seed=1)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = METHODS[name](base, **OPTIONS.get(name, {}))
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    if name != "full":
        assert trainable < total
    batch = toy_batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR[name])
    losses = []
    for _ in range(20):
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss = completion_loss_sum(model, batch, only_completion_logits=name not in PROMPT_LEARNING) / n
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 15, losses  # falls step after step
    named = dict(model.named_parameters())
    for n, p in named.items():
        orig = n.replace("base_model.model.", "").replace(".base_layer", "")
        if orig in before and not p.requires_grad:
            assert torch.equal(p, before[orig]), f"frozen {n} changed"
    changed = [n for n, p in named.items() if p.requires_grad
               and (n not in before or not torch.equal(p, before[n]))]
    assert changed, "no trainable parameter changed"


def test_zero_initialised_lora_gives_base_logits() -> None:
    base = tiny_model(vocab_size=64, seed=2)
    ids = toy_batch()["input_ids"]
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        wrapped = METHODS["lora"](copy.deepcopy(base), r=4, targets=["q_proj", "v_proj", "down_proj"])
        got = wrapped(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)


def test_selective_methods_choose_the_right_weights() -> None:
    m = METHODS["bitfit"](tiny_model(vocab_size=64))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        n for n, _ in m.named_parameters() if "norm" in n}
    m = METHODS["last_n"](tiny_model(vocab_size=64), last_n=1)
    chosen = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(".layers.1." in n or n.startswith("model.norm") for n in chosen) and len(chosen) > 5


@pytest.mark.parametrize("name, options, message", [
    ("lora", {"targets": ["nope_proj"]}, "name no module of this model"),
    ("regex", {"patterns": ["["]}, "not a valid regular expression"),
    ("regex", {"patterns": ["zzz"]}, "selects no parameter"),
    ("last_n", {"last_n": 9}, "must be between 1 and 2"),
])
def test_bad_method_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(InstructuneError, match=message):
        METHODS[name](tiny_model(vocab_size=64), **options)


def test_an_option_meant_for_another_method_is_refused() -> None:
    from instructune.config import load_config, to_dict
    from instructune.training.config import TrainConfig

    with pytest.raises(InstructuneError) as err:
        load_config(TrainConfig, data={"method": {"name": "full", "r": 16, "bogus": 1}})
    message = str(err.value)
    assert "method.r: not an option of method full" in message and "it belongs to lora" in message
    assert "method.bogus: not an option of method full" in message
    with pytest.raises(InstructuneError, match="method full has no option r"):
        METHODS["full"](tiny_model(vocab_size=64), r=16)
    # the chosen method's own options: read flat, written back flat
    cfg = load_config(TrainConfig, data={"method": {"name": "prompt_tuning", "num_virtual_tokens": 4}})
    assert cfg.method.options.num_virtual_tokens == 4 and cfg.method.options.init_text is None
    assert to_dict(cfg)["method"] == {"name": "prompt_tuning", "num_virtual_tokens": 4, "init_text": None}
    with pytest.raises(InstructuneError, match="dropout must be in \\[0, 1\\)"):
        load_config(TrainConfig, data={"method": {"name": "lora", "dropout": 1.5}})


def test_registry_reads_each_method_from_its_module() -> None:
    assert {n for n, m in METHODS.items() if m.peft} == {"lora", "prompt_tuning", "ia3", "prefix_tuning"}
    assert {n for n, m in METHODS.items() if m.prompt_learning} == PROMPT_LEARNING
    assert METHODS["lora"].option_names() == ["r", "alpha", "dropout", "targets", "dora"]
    assert all(issubclass(m.options, MethodOptions) for m in METHODS.values())
    # the flag and the options agree: a prompt-learning method's options say how many tokens it prepends
    assert {n for n, m in METHODS.items() if issubclass(m.options, PromptLearningOptions)} == PROMPT_LEARNING


def test_method_config_holds_the_chosen_methods_options() -> None:
    assert isinstance(MethodConfig().options, lora.Options)  # left out: the method's defaults
    assert isinstance(MethodConfig("full").options, METHODS["full"].options)
    assert MethodConfig("prompt_tuning", prompt_tuning.Options(num_virtual_tokens=7)).virtual_tokens == 7
    assert MethodConfig("lora").virtual_tokens == 0
    assert not hasattr(MethodConfig("lora"), "r")  # options are read as method.options.r, never forwarded
    with pytest.raises(InstructuneError, match="method full takes instructune.methods.full.Options"):
        MethodConfig("full", lora.Options())
