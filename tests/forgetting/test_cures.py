"""Forgetting regularizers on a tiny llama: zero at the anchors, growing away from them, exact Fisher, resumable."""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from instructune.cli import main
from instructune.config import load_config, to_dict
from instructune.errors import InstructuneError
from instructune.forgetting.cures import (
    EWC,
    REGULARIZERS,
    Cure,
    Distill,
    SynapticIntelligence,
    build_regularizer,
    l2sp,
)
from instructune.forgetting.cures.distill import completion_kl
from instructune.forgetting.cures.ewc import estimate_fisher
from instructune.testing import tiny_model
from instructune.training.config import TrainConfig

VOCAB, PAD = 64, 2
FAST = {"ewc": {"samples": 8}, "si": {"warmup_steps": 3, "warmup_lr": 1e-2}, "l2sp": {}, "distill": {}}


def keep_data(batches: int = 2, rows: int = 4, length: int = 12, seed: int = 0) -> list[dict]:
    """Random token batches: a 4-token prompt (labels -100), a completion, the last row right-padded by 3."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ids = torch.randint(3, VOCAB, (rows, length), generator=g)
        mask = torch.ones_like(ids)
        labels = ids.clone()
        labels[:, :4] = -100
        ids[-1, -3:], mask[-1, -3:], labels[-1, -3:] = PAD, 0, -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def keep(batches: list[dict]):
    return lambda: batches  # a list is a fresh iterable every time it is iterated


def direction(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: 0.05 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def move(model: torch.nn.Module, start: dict[str, torch.Tensor], d: dict[str, torch.Tensor], t: float) -> None:
    params = dict(model.named_parameters())
    for n, step in d.items():
        params[n].copy_(start[n] + t * step)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_penalty_is_zero_at_the_anchors_and_grows_along_a_line(name: str) -> None:
    model = tiny_model(VOCAB)
    reg = build_regularizer(name, model, keep(keep_data(batches=1)), lam=1.0, **FAST[name])
    start, d = snapshot(model), direction(model)
    values = []
    for t in (0.0, 0.5, 1.0, 2.0):
        move(model, start, d, t)
        values.append(float(reg.penalty(model).detach()))
    assert values[0] == 0.0
    assert values[1] > 0 and all(b > a for a, b in zip(values, values[1:], strict=False)), values
    if name == "l2sp":  # lam/2 * t^2 |d|^2 exactly
        sq = sum(float(v.pow(2).sum()) for v in d.values())
        assert values[2] == pytest.approx(sq / 2, rel=1e-5)


def test_ewc_with_zero_fisher_is_no_penalty() -> None:
    model = tiny_model(VOCAB)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg = EWC(anchors, {n: torch.zeros_like(a) for n, a in anchors.items()}, lam=100.0)
    move(model, snapshot(model), direction(model), 1.0)
    assert float(reg.penalty(model)) == 0.0


def hand_fisher(model: torch.nn.Module, batches: list[dict], samples: int) -> dict[str, torch.Tensor]:
    """Per-example Fisher computed independently: each unpadded example alone, loss.backward, square, mean."""
    model = copy.deepcopy(model)
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    rows = [(b, i) for b in batches for i in range(b["input_ids"].shape[0])][:samples]
    for b, i in rows:
        n_real = int(b["attention_mask"][i].sum())
        model.zero_grad()
        model(input_ids=b["input_ids"][i:i + 1, :n_real], labels=b["labels"][i:i + 1, :n_real]).loss.backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.pow(2)
    return {n: t / len(rows) for n, t in total.items()}


def test_ewc_fisher_matches_a_hand_computed_per_example_fisher() -> None:
    model, batches = tiny_model(VOCAB), keep_data(batches=2, rows=4)
    reg = EWC.build(model, keep(batches), samples=6)
    expected = hand_fisher(model, batches, samples=6)
    assert set(reg.fisher) == set(expected)
    for n in expected:
        torch.testing.assert_close(reg.fisher[n], expected[n], atol=1e-6, rtol=0)
    # the squared batch-mean gradient, which is not the empirical Fisher, is far from it
    model.zero_grad()
    model(**batches[0]).loss.backward()
    emb = "model.embed_tokens.weight"
    squared_mean = dict(model.named_parameters())[emb].grad.pow(2)
    assert float((squared_mean - reg.fisher[emb]).norm()) > 0.5 * float(reg.fisher[emb].norm())


def test_ewc_leaves_grads_and_training_mode_alone() -> None:
    model = tiny_model(VOCAB).train()
    EWC.build(model, keep(keep_data()), samples=3)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_ewc_fisher_round_trips_through_a_file_and_normalizes(tmp_path) -> None:
    model, path = tiny_model(VOCAB), tmp_path / "fisher" / "keep.safetensors"
    first = EWC.build(model, keep(keep_data()), samples=5, fisher_path=str(path))
    assert path.exists()

    def must_not_run():
        raise AssertionError("the Fisher should have been read from the file")
    second = EWC.build(model, must_not_run, samples=5, fisher_path=str(path))
    for n in first.fisher:
        assert torch.equal(first.fisher[n], second.fisher[n])
    scaled = EWC.build(model, must_not_run, fisher_path=str(path), normalize=True)
    mean = sum(float(f.double().sum()) for f in scaled.fisher.values()) / sum(f.numel() for f in scaled.fisher.values())
    assert mean == pytest.approx(1.0, rel=1e-5)
    model.model.layers[0].requires_grad_(False)  # other trainable parameters: the file no longer fits
    with pytest.raises(InstructuneError, match="delete the file|Delete the file"):
        EWC.build(model, must_not_run, fisher_path=str(path))


def test_distill_is_zero_for_the_original_model_and_positive_after_a_change() -> None:
    model = tiny_model(VOCAB).train()
    reg = Distill.build(model, keep(keep_data(batches=1)), lam=1.0, temperature=2.0)
    assert reg.teacher is None and reg.teacher_kind.startswith("the original weights")
    assert float(reg.penalty(model)) == 0.0
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.05)
    loss = reg.penalty(model)
    loss.backward()
    assert float(loss) > 1e-4
    assert model.model.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0
    assert model.training  # the teacher's eval mode did not leak


def test_distill_with_lora_disables_adapters_instead_of_copying() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(VOCAB), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                          target_modules=["q_proj", "v_proj"]))
    reg = Distill.build(model, keep(keep_data(batches=1)), lam=1.0)
    assert reg.teacher is None and reg.anchors == {}  # no second copy of anything
    assert set(reg.state_dict()) == {"position"}
    assert float(reg.penalty(model)) == 0.0  # B = 0 at init: the adapter does not change the model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    assert float(reg.penalty(model)) > 1e-4


def test_distill_with_lora_and_trained_base_weights_keeps_the_original_weights() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(VOCAB), LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj"]))
    norm = model.base_model.model.model.norm.weight.requires_grad_(True)  # disabling adapters would not undo it
    reg = Distill.build(model, keep(keep_data(batches=1)))
    assert reg.teacher_kind.startswith("the original weights") and len(reg.anchors) == 2 * 2 + 1
    assert float(reg.penalty(model)) == 0.0
    with torch.no_grad():
        norm.mul_(1.5)
    assert float(reg.penalty(model)) > 1e-4


def test_distill_with_prompt_tuning_aligns_virtual_tokens() -> None:
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(tiny_model(VOCAB), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    reg = Distill.build(model, keep(keep_data(batches=1)))
    assert reg.teacher is None and reg.anchors == {}
    loss = reg.penalty(model)  # the prompt changes the model, so the base model disagrees a little
    loss.backward()
    assert float(loss) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_distill_with_an_explicit_teacher() -> None:
    model, batches = tiny_model(VOCAB), keep(keep_data(batches=1))
    same = Distill.build(model, batches, teacher=copy.deepcopy(model))
    assert same.teacher_kind == "a separate model" and float(same.penalty(model)) == 0.0
    other = Distill.build(model, batches, teacher=tiny_model(VOCAB, seed=1))
    assert float(other.penalty(model)) > 1e-3
    with pytest.raises(InstructuneError, match="tokenizer"):
        Distill.build(model, batches, teacher=tiny_model(VOCAB + 8)).penalty(model)


def test_completion_kl_counts_only_positions_that_predict_completion_tokens() -> None:
    student, teacher = torch.randn(1, 6, 5), torch.randn(1, 6, 5)
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100]])  # tokens 3, 4 predicted at positions 2, 3
    s, t = student[0, 2:4].log_softmax(-1), teacher[0, 2:4].log_softmax(-1)
    expected = (t.exp() * (t - s)).sum(-1).mean()
    torch.testing.assert_close(completion_kl(student, teacher, labels, 1.0), expected)
    longer = torch.cat([torch.randn(1, 2, 5), student], dim=1)  # two virtual tokens in front
    torch.testing.assert_close(completion_kl(longer, teacher, labels, 1.0), expected)
    assert float(completion_kl(student, teacher, torch.full((1, 6), -100), 1.0)) == 0.0


def loop_steps(model: torch.nn.Module, reg, batches: list[dict], steps: int, optimizer=None) -> None:
    """The training loop's protocol (plain SGD by default): penalty, backward, before_step, step, after_step."""
    opt = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for i in range(steps):
        opt.zero_grad()
        (model(**batches[i % len(batches)]).loss + reg.penalty(model)).backward()
        reg.before_step(model)
        opt.step()
        reg.after_step(model)


def test_si_importance_is_non_negative_and_accumulates() -> None:
    model, batches = tiny_model(VOCAB), keep_data()
    reg = SynapticIntelligence.build(model, keep(batches), lam=1.0, warmup_steps=4, warmup_lr=1e-2)
    assert all(float(o.min()) >= 0 for o in reg.importance.values())
    assert sum(float(o.sum()) for o in reg.importance.values()) > 0
    path = []
    for _ in range(4):  # with SGD each step adds lr * g^2 >= 0 to omega
        loop_steps(model, reg, keep_data(seed=3), steps=1)
        path.append(sum(float(o.sum()) for o in reg.omega.values()))
    assert all(b > a for a, b in zip(path, path[1:], strict=False)), path
    before = {n: o.clone() for n, o in reg.importance.items()}
    reg.consolidate(model)
    assert all(torch.all(reg.importance[n] >= before[n]) for n in before)
    assert sum(float((reg.importance[n] - before[n]).sum()) for n in before) > 0
    assert all(float(o.abs().max()) == 0 for o in reg.omega.values())  # a new task starts a new path
    assert float(reg.penalty(model)) == 0.0  # re-anchored at the current weights


def test_si_warm_up_restores_the_weights_exactly() -> None:
    model = tiny_model(VOCAB).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reg = SynapticIntelligence.build(model, keep(keep_data()), warmup_steps=5, warmup_lr=1e-2, optimizer="adam")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(torch.equal(reg.anchors[n], before[n]) for n in reg.anchors)


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_only_trainable_parameters_are_regularized(name: str) -> None:
    model = tiny_model(VOCAB)
    model.requires_grad_(False)
    model.model.layers[1].requires_grad_(True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reg = build_regularizer(name, model, keep(keep_data(batches=1)), **FAST[name])
    assert set(reg.anchors) == trainable
    if name == "ewc":
        assert set(reg.fisher) == trainable
    with torch.no_grad():  # moving a frozen weight: never the regularizer's business
        model.model.layers[0].mlp.up_proj.weight.add_(0.1)
    assert float(reg.penalty(model)) == 0.0


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_state_dict_round_trips_through_a_checkpoint_file(name: str, tmp_path) -> None:
    model, batches = tiny_model(VOCAB), keep_data(batches=3)
    reg = build_regularizer(name, model, keep(batches), **FAST[name])
    loop_steps(model, reg, keep_data(seed=5), steps=2)
    save_file({k: v.contiguous() for k, v in reg.state_dict().items()}, str(tmp_path / "reg.safetensors"))
    resumed_model = copy.deepcopy(model)  # a resumed run builds its regularizer on the resumed weights
    fresh = build_regularizer(name, resumed_model, keep(batches), **FAST[name])
    fresh.load_state_dict(load_file(str(tmp_path / "reg.safetensors")))
    saved, loaded = reg.state_dict(), fresh.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert float(fresh.penalty(resumed_model)) == float(reg.penalty(model))  # same anchors, same next batch
    with pytest.raises(InstructuneError, match="does not match"):
        fresh.load_state_dict({"anchors/nope": torch.zeros(1)})


def test_si_state_carries_the_running_path_integral() -> None:
    model = tiny_model(VOCAB)
    reg = build_regularizer("si", model, keep(keep_data()), **FAST["si"])
    loop_steps(model, reg, keep_data(seed=5), steps=2)
    state = reg.state_dict()
    assert any(k.startswith("omega/") for k in state) and any(k.startswith("importance/") for k in state)
    assert sum(float(v.abs().sum()) for k, v in state.items() if k.startswith("omega/")) > 0


@pytest.mark.parametrize(("name", "lam", "options"), [("ewc", 10.0, {"samples": 8, "normalize": True}),
                                                     ("si", 10.0, FAST["si"]), ("l2sp", 10.0, {}),
                                                     ("distill", 1.0, {})])
def test_a_strong_regularizer_forgets_less_of_the_keep_data(name: str, lam: float, options: dict) -> None:
    held_out, target = keep_data(seed=7), keep_data(seed=9)
    for b in target:  # a new task: completions drawn from 8 tokens only, unlike the keep data
        b["labels"] = torch.where(b["labels"] == -100, b["labels"], b["labels"] % 8 + 3)
        b["input_ids"] = torch.where(b["labels"] == -100, b["input_ids"], b["labels"])

    def forgetting(lam: float) -> float:
        model = tiny_model(VOCAB)
        reg = build_regularizer(name, model, keep(keep_data()), lam=lam, **options)
        with torch.no_grad():
            before = sum(float(model(**b).loss) for b in held_out)
        loop_steps(model, reg, target, steps=6, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
        with torch.no_grad():
            return sum(float(model(**b).loss) for b in held_out) - before

    free, held = forgetting(0.0), forgetting(lam)
    assert free > 1.0 and held < 0.5 * free, (held, free)


def test_unknown_names_options_and_bad_values_are_clear_errors() -> None:
    model, batches = tiny_model(VOCAB), keep(keep_data())
    with pytest.raises(InstructuneError, match="known: ewc, si, l2sp, distill"):
        build_regularizer("ewk", model, batches)
    with pytest.raises(InstructuneError, match=r"unknown option\(s\) sample;.*samples \(default 128\)"):
        build_regularizer("ewc", model, batches, sample=3)
    with pytest.raises(InstructuneError, match="lam must be a number >= 0.*warmup_steps must be an integer"):
        build_regularizer("si", model, batches, lam=-1, warmup_steps=0)
    with pytest.raises(InstructuneError, match="keep data is empty"):
        build_regularizer("si", model, lambda: [], warmup_steps=1)
    model.requires_grad_(False)
    with pytest.raises(InstructuneError, match="no trainable parameter"):
        build_regularizer("l2sp", model, batches)


def test_fisher_of_a_short_keep_set_uses_what_there_is() -> None:
    model = tiny_model(VOCAB)
    params = {n: p for n, p in model.named_parameters()}
    _, used = estimate_fisher(model, params, keep(keep_data(batches=1, rows=3)), samples=100)
    assert used == 3


@pytest.mark.parametrize(("options", "says"), [
    ({"sampels": 8}, "regularizers.0.options.sampels: not an option of regularizer ewc; did you mean 'samples'? "
                     "It accepts samples (default 128), fisher_path (default None), normalize (default False)"),
    ({"samples": -4}, "regularizers.0.options.samples must be an integer >= 1, got -4"),
    ({"samples": "many"}, "regularizers.0.options.samples: 'many' is not a valid int")])
def test_a_wrong_cure_option_is_refused_before_any_model_loads(options: dict, says: str, tmp_path, monkeypatch,
                                                               capsys) -> None:
    loaded = []

    def load_model(*args: object, **kwargs: object) -> None:
        loaded.append(args)
        raise AssertionError("a model loaded before the config was checked")
    for where in ("instructune.models", "instructune.training.trainer", "instructune.forgetting.cures.distill"):
        monkeypatch.setattr(f"{where}.load_model", load_model)  # and everywhere it is imported by name
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", "output_dir": str(tmp_path / "run"), "keep": [{"source": "news"}],
                                    "regularizers": [{"name": "ewc", "lam": 1.0, "options": options}]}))
    with pytest.raises(InstructuneError) as refused:
        load_config(TrainConfig, path)
    assert says in str(refused.value)
    assert main(["train", str(path), "max_steps=2"]) == 2
    assert says in capsys.readouterr().err
    assert loaded == [] and not (tmp_path / "run").exists()


@dataclass
class ToyOptions:
    share: float = 0.5
    """The share of lam the toy cure applies."""

    def problems(self) -> list[str]:
        return [] if 0 < self.share <= 1 else [f"share must be in (0, 1], got {self.share}"]


def test_a_new_cure_is_one_module_and_one_registry_line(monkeypatch) -> None:
    toy = types.ModuleType("toy")  # the module a new cure's file would be: NAME, Options, build
    toy.NAME, toy.Options = "toy", ToyOptions
    toy.build = lambda model, keep_batches, lam, options: l2sp.build(model, keep_batches, lam * options.share,
                                                                     l2sp.Options())
    monkeypatch.setitem(REGULARIZERS, toy.NAME, Cure.of(toy))  # what its entry in _MODULES adds
    data = {"keep": [{"source": "news"}], "regularizers": [{"name": "toy", "lam": 2.0, "options": {"share": 0.25}}]}
    cfg = load_config(TrainConfig, data=data)
    assert cfg.regularizers[0].options == ToyOptions(0.25) and to_dict(cfg)["regularizers"] == data["regularizers"]
    reg = build_regularizer("toy", tiny_model(VOCAB), keep(keep_data(batches=1)), cfg.regularizers[0].lam,
                            cfg.regularizers[0].options)
    assert reg.lam == 0.5
    for options, says in (({"share": 3}, r"regularizers\.0\.options\.share must be in \(0, 1\], got 3"),
                          ({"samples": 8}, r"options\.samples: not an option of regularizer toy.*share \(default 0\.5\)")):
        with pytest.raises(InstructuneError, match=says):
            load_config(TrainConfig, data={**data, "regularizers": [{"name": "toy", "options": options}]})
