"""The train recipe end to end on a tiny model: metrics, outputs, resume, errors."""

from __future__ import annotations

import gc
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructune.cli import main
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.training.config import TrainConfig
from instructune.training.trainer import train

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    metrics: [accuracy, f1]
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""
GOOD = ["great", "wonderful", "good", "moving", "funny"]
BAD = ["dull", "terrible", "bad", "lifeless", "boring"]


def toy_task(folder: Path, n: int = 120) -> tuple[Path, Path]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(GOOD if label == "pos" else BAD, 2)
        rows.append({"text": f"a {words[0]} and {words[1]} film number {i}", "label": label})
    data = folder / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tpl = folder / "templates.yaml"
    tpl.write_text(TEMPLATES)
    return data, tpl


def config(tmp_path: Path, model: Path, **over: object) -> TrainConfig:
    data, tpl = toy_task(tmp_path)
    base = [f"model={model}", f"output_dir={tmp_path / 'run'}", f"data.source={data}",
            f"data.template_file={tpl}", "data.templates=[mood]", "data.val_limit=8", "data.test_limit=8",
            "batch_size=8", "max_steps=12", "eval_every=0", "save_every=4", "keep_checkpoints=5",
            "log_every=1", "optim.lr=1e-2", "optim.warmup_steps=2", "method.name=lora"]
    if over.get("method.name", "lora") == "lora":
        base.append("method.dropout=0.1")  # a LoRA option: refused for another method
    return load_config(TrainConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_lora_run_writes_adapter_metrics_and_logs(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    metrics = train(cfg, log=lambda *_: None).metrics
    run = cfg.output_dir
    assert (run / "adapter" / "adapter_config.json").exists()
    assert list((run / "tensorboard").iterdir())
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["steps"] == 12 and 0 < saved["trainable_pct"] < 10
    assert {"loss", "accuracy", "f1"} <= set(saved["test"]) and saved["tokens_per_s"] > 0
    assert metrics["validation"]["loss"] == pytest.approx(saved["validation"]["loss"])
    curve = losses(run)
    assert len(curve) == 12 and sum(curve[-3:]) < sum(curve[:3])
    # what was trained, token by token: the completion alone carries loss; the report shows it
    view = json.loads((run / "data_inspect.json").read_text())
    assert view["totals"]["examples"] == saved["train_examples"] and len(view["examples"]) == 3
    for e in view["examples"]:
        trained = "".join(text for text, t in e["tokens"] if t)
        assert trained.strip() in {"positive<|im_end|>", "negative<|im_end|>"}  # the answer and its end token
        assert "Review:" in "".join(text for text, t in e["tokens"] if not t)
    from instructune.report import build_report
    html = build_report([run], tmp_path / "report")["html"].read_text()
    assert 'id="trained-tokens"' in html
    assert html.count("class='tok trained'") == sum(t for e in view["examples"][:2] for _, t in e["tokens"])
    # the adapter loads with plain peft
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "adapter"))


def test_resume_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    train(cfg, log=lambda *_: None)
    run = cfg.output_dir
    final = load_file(str(run / "checkpoint-00000012" / "trainable.safetensors"))
    # simulate a crash after step 8: drop what came later, then resume
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for p in ["checkpoint-00000012", "adapter", "metrics.json"]:
        shutil.rmtree(resumed / p, ignore_errors=True) if (resumed / p).is_dir() else (resumed / p).unlink()
    (resumed / "config.yaml").write_text((resumed / "config.yaml").read_text().replace(str(run), str(resumed)))
    cfg2 = config(tmp_path, tiny_model_dir, output_dir=resumed)
    train(cfg2, resume=True, log=lambda *_: None)
    again = load_file(str(resumed / "checkpoint-00000012" / "trainable.safetensors"))
    assert again.keys() == final.keys()
    for k in final:
        assert torch.equal(again[k], final[k]), k


def test_keep_no_checkpoints_writes_none_and_trains_the_same(tmp_path: Path, tiny_model_dir: Path) -> None:
    kept = train(config(tmp_path, tiny_model_dir, max_steps=6, eval_every=3), log=lambda *_: None).metrics
    cfg = config(tmp_path, tiny_model_dir, max_steps=6, eval_every=3, keep_checkpoints=0,
                 output_dir=tmp_path / "none")
    none = train(cfg, log=lambda *_: None).metrics
    run = cfg.output_dir
    assert not list(run.glob("checkpoint-*")) and not (run / "best").exists()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    # the final weights were the best: scored from memory, the same numbers as the run that kept best/
    assert (tmp_path / "run" / "best").exists() and none["validation"]["step"] == 6
    assert none["validation"] == pytest.approx(kept["validation"])
    assert none["test"] == pytest.approx(kept["test"])
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resume_with_changed_config_names_fields(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir, max_steps=4)
    train(cfg, log=lambda *_: None)
    changed = config(tmp_path, tiny_model_dir, max_steps=4, **{"optim.lr": 0.5})
    with pytest.raises(InstructuneError, match=r"optim.lr \(0.01 -> 0.5\)"):
        train(changed, resume=True, log=lambda *_: None)
    with pytest.raises(InstructuneError, match="already holds a run; pass --resume"):
        train(cfg, log=lambda *_: None)


def test_full_finetune_saves_plain_transformers_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir, **{"method.name": "full", "optim.lr": 1e-3, "max_steps": 4})
    train(cfg, log=lambda *_: None)
    from transformers import AutoModelForCausalLM
    tuned = AutoModelForCausalLM.from_pretrained(cfg.output_dir / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [not torch.equal(a, b) for a, b in zip(tuned.parameters(), base.parameters())]
    assert all(diffs)


def test_invalid_config_reports_all_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("method:\n  name: lorax\noptim:\n  lr: -1\nbatch_size: 0\n")
    assert main(["train", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'lorax'" in err and "optim.lr must be > 0" in err and "batch_size must be at least 1" in err


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    """torchrun, 2 CPU processes (gloo): the same global batch gives the same losses as one process."""
    import os
    import subprocess
    import sys

    import yaml

    data, tpl = toy_task(tmp_path)
    cfg = {"model": str(tiny_model_dir), "batch_size": 8, "max_steps": 4, "eval_every": 0, "save_every": 0,
           "log_every": 1, "optim": {"lr": 1e-2}, "method": {"name": "lora", "dropout": 0.0},
           "data": {"source": str(data), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                    "test_limit": 8}}
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for procs in (1, 2):
        subprocess.run([*runner, str(procs), "-m", "instructune", "train", str(f), f"output_dir={tmp_path / str(procs)}"],
                       check=True, env=env, capture_output=True, timeout=300)
    one, two = losses(tmp_path / "1"), losses(tmp_path / "2")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, abs=1e-4)


def test_mixture_training_reports_each_task_and_macro(tmp_path: Path, tiny_model_dir: Path) -> None:
    data, tpl = toy_task(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"plain text {i}", "label": "neg" if i % 3 else "pos"}) + "\n"
                             for i in range(60)))
    cfg = config(tmp_path, tiny_model_dir, max_steps=4, **{"data.test_limit": 6})
    cfg.mixture = load_config(TrainConfig, None, [
        f"mixture.tasks=[{{source: {data}, template_file: {tpl}}}, {{source: {other}, template_file: {tpl}}}]",
        "mixture.strategy=proportional"]).mixture
    metrics = train(cfg, log=lambda *_: None).metrics
    per = metrics["test"]["per_task"]
    assert set(per) == {"reviews/mood", "other/mood"}
    macro = (per["reviews/mood"]["accuracy"] + per["other/mood"]["accuracy"]) / 2
    assert metrics["test"]["accuracy"] == pytest.approx(macro)
    counts = metrics["mixture_epoch0"]
    assert counts["reviews"]["mood"] + counts["other"]["mood"] == 96 + 48  # proportional: one pass of both


@pytest.mark.parametrize("override, message", [("optim.lr=.nan", "lr must be > 0"),
                                               ("data.fractions=[.nan, 0.5, 0.5]", "fractions must be")])
def test_nan_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(InstructuneError, match=message):
        load_config(TrainConfig, None, [override])


def test_peak_memory_restarts_from_the_memory_in_use() -> None:
    from instructune.training.setup import peak_memory_mb, reset_peak_memory

    big = torch.ones(50_000_000)  # 200 MB, touched
    del big
    before = peak_memory_mb()
    assert reset_peak_memory()
    assert peak_memory_mb() < before - 150


def test_bf16_lora_stores_frozen_linears_in_bf16_with_equal_results(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from instructune.methods import METHODS
    from instructune.training.batching import completion_loss_sum
    from instructune.training.setup import frozen_linears_to_bf16

    own = shutil.copytree(tiny_model_dir, tmp_path / "model")  # a file only this model maps
    model = METHODS["lora"](AutoModelForCausalLM.from_pretrained(own), dropout=0.0)
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.where(ids > 100, ids, -100)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = completion_loss_sum(model, batch, True)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    weights = str(own / "model.safetensors")
    assert any(weights in line for line in Path("/proc/self/maps").read_text().splitlines())  # loaded as a file map
    assert frozen_linears_to_bf16(model) > 0
    gc.collect()
    # the map, whose pages hold the replaced fp32 weights, is gone: the remaining weights were copied off it
    assert not any(weights in line for line in Path("/proc/self/maps").read_text().splitlines())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n in trainable)  # adapters keep fp32 master weights
    assert any(d == torch.bfloat16 for d in dtypes.values())
    assert model.get_output_embeddings().weight.dtype == torch.float32  # tied to the embeddings: kept
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = completion_loss_sum(model, batch, True)
    assert torch.equal(before, after)  # autocast rounded the fp32 weights to these same bf16 values

    # end to end: a bf16 LoRA run with an EWC estimate and test scores trains and saves an fp32 adapter
    cfg = config(tmp_path, tiny_model_dir, precision="bf16", max_steps=6,
                 keep="[{source: " + str(tmp_path / "reviews.jsonl") + ", template_file: "
                 + str(tmp_path / "templates.yaml") + ", templates: [mood]}]",
                 regularizers="[{name: ewc, lam: 1.0, options: {samples: 4}}]")
    metrics = train(cfg, log=lambda *_: None).metrics
    assert metrics["test"]["loss"] > 0 and metrics["train_tokens"] > 0 and metrics["train_seconds"] > 0
    saved = load_file(str(cfg.output_dir / "adapter" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_attention_kernels_train_alike_and_auto_picks_by_method_and_kept_weights(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    from instructune.training.attention import choose

    def _attention(cfg: TrainConfig, model: object, device: str) -> str:  # the run's settings, as the trainer passes them
        length = cfg.data.max_length + cfg.method.virtual_tokens
        c = model.config  # type: ignore[attr-defined]
        return choose(cfg.attention, device, cfg.method.prompt_learning, cfg.loop.batch_size, length,
                      c.num_attention_heads, c.num_hidden_layers)

    runs = {}
    for kernel in ("recompute", "eager", "sdpa"):
        cfg = config(tmp_path, tiny_model_dir, max_steps=4, keep_checkpoints=0, attention=kernel,
                     output_dir=tmp_path / kernel, **{"method.dropout": 0.0})
        runs[kernel] = train(cfg, log=lambda *_: None).metrics
        assert runs[kernel]["attention"] == kernel
    # the same maths by another kernel: the same training, up to float rounding
    for kernel in ("recompute", "sdpa"):
        assert runs[kernel]["validation"]["loss"] == pytest.approx(runs["eager"]["validation"]["loss"], rel=1e-4)
        assert losses(tmp_path / kernel) == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)

    model = type("M", (), {"config": type("C", (), {"num_attention_heads": 9, "num_hidden_layers": 30})()})()
    assert _attention(config(tmp_path, tiny_model_dir), model, "cpu") == "recompute"
    assert _attention(config(tmp_path, tiny_model_dir, **{"method.name": "full"}), model, "cpu") == "recompute"
    assert _attention(config(tmp_path, tiny_model_dir), model, "cuda") == "sdpa"
    # prompt tuning's masks: batch 8 x 9 heads x 30 layers x (256 + 20)^2 x 6 bytes = 987 MB kept: eager;
    # at 512 tokens 3.6 GB: sdpa
    prompt = {"method.name": "prompt_tuning", "method.num_virtual_tokens": 20}
    assert _attention(config(tmp_path, tiny_model_dir, **prompt), model, "cpu") == "eager"
    assert _attention(config(tmp_path, tiny_model_dir, **prompt, **{"data.max_length": 512}), model, "cpu") == "sdpa"
    assert _attention(config(tmp_path, tiny_model_dir, attention="sdpa"), model, "cpu") == "sdpa"


def test_metrics_record_the_measured_precision_and_threads(tmp_path: Path, tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from instructune import hardware

    monkeypatch.delenv("INSTRUCTUNE_AUTO_PRECISION")
    monkeypatch.setattr(hardware.matmul, "matmul_gflops", lambda shapes, bf16: 2.0 if bf16 else 66.0)  # AVX2
    lines: list[str] = []
    threads = torch.get_num_threads()
    try:
        cfg = config(tmp_path, tiny_model_dir, max_steps=2, threads=1)
        metrics = train(cfg, log=lines.append).metrics
    finally:
        torch.set_num_threads(threads)
    assert metrics["precision"]["requested"] == "auto" and metrics["precision"]["precision"] == "fp32"
    assert (metrics["precision"]["fp32_gflops"], metrics["precision"]["bf16_gflops"]) == (66.0, 2.0)
    assert metrics["threads"] == 1
    assert "threads: 1 (as asked)" in lines
    assert any(line.startswith("precision auto -> fp32: bf16 matmul 2.0 GFLOP/s vs fp32 66.0 on this CPU")
               for line in lines)
    assert json.loads((cfg.output_dir / "metrics.json").read_text())["precision"] == metrics["precision"]


def test_a_dataset_folder_without_stats_json_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A folder of split files and templates.json (made by hand, or by the training bench) used to crash the
    pre-load check with a traceback: it read stats.json to learn whether the data were conversations."""
    data, tpl = toy_task(tmp_path)
    folder = tmp_path / "built"
    assert main(["data", "build", "--file", str(data), "--templates-file", str(tpl), "--template", "mood",
                 "--out", str(folder)]) == 0
    (folder / "stats.json").unlink()
    empty = tmp_path / "none.yaml"
    empty.write_text("")
    assert main(["train", str(empty), f"model={tiny_model_dir}", f"output_dir={tmp_path / 'run'}",
                 f"data.source={folder}", "data.val_limit=4", "data.test_limit=4", "max_steps=1", "eval_every=0",
                 "save_every=0", "keep_checkpoints=0", "eval_mode=likelihood"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 1


def test_train_says_what_it_scores_and_registers(tmp_path: Path, tiny_model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No long phase is silent: each validation's scores, the test scoring and the registration are printed,
    and scoring reports progress (outside a terminal, in status lines on stderr)."""
    from instructune import progress

    monkeypatch.setattr(progress, "STATUS_EVERY", 0.0)  # a status line at every batch: this run lasts seconds
    data, tpl = toy_task(tmp_path)
    empty = tmp_path / "none.yaml"
    empty.write_text("")
    run = tmp_path / "run"
    assert main(["train", str(empty), f"model={tiny_model_dir}", f"output_dir={run}", f"data.source={data}",
                 f"data.template_file={tpl}", "data.templates=[mood]", "data.val_limit=4", "data.test_limit=6",
                 "max_steps=4", "eval_every=2", "save_every=0", "keep_checkpoints=0", "method.name=lora",
                 "register_as=mood-lora"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^validation, step 2: loss \d+\.\d{4}, accuracy \d\.\d{4}, f1 ", out, re.M)
    assert re.search(r"^validation, step 4: loss ", out, re.M)
    assert "scoring the best validated weights on 6 test examples" in out
    assert re.search(rf"^registered adapter 'mood-lora' in .*adapters.mood-lora: use it by name, as in "
                     rf"`instructune eval --run {re.escape(str(run))} --adapter mood-lora`", out, re.M)
    assert re.search(r"validation loss: 4/4 examples, \d+ s\n", err) and "test loss: 6/6 examples" in err
    assert re.search(r"generate: 6/6 examples, \d+ s\n", err)  # the test split, scored by generation
    assert json.loads((run / "metrics.json").read_text())["test_examples"] == 6
