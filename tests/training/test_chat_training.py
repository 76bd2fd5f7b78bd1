"""Training on alpaca records and chat conversations end to end on a tiny model; packing in a real run;
the chat format a base model trained with is saved and used again; `data inspect`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from instructune.adapters.attach import load_adapted
from instructune.cli import main
from instructune.config import load_config
from instructune.data import chat_template
from instructune.training.config import TrainConfig
from instructune.training.trainer import train

COLOURS = ["red", "green", "blue", "black", "white"]


def alpaca_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.sample(COLOURS, 2)
        rows.append({"instruction": "Name the first colour.", "input": f"{a} then {b} ({i})", "output": a}
                    if i % 2 else {"instruction": f"Repeat the colour {a}. ({i})", "input": "", "output": a})
    return rows


def chat_rows(n: int) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        a, b = rng.sample(COLOURS, 2)
        rows.append({"messages": [{"role": "system", "content": "Answer with one colour."},
                                  {"role": "user", "content": f"Say {a}. ({i})"}, {"role": "assistant", "content": a},
                                  {"role": "user", "content": f"Now {b}."}, {"role": "assistant", "content": b}]})
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_config(tmp_path: Path, model: Path, source: Path, max_length: int = 128, **over: object) -> TrainConfig:
    data = {"model": str(model), "output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 24,
            "eval_every": 2, "save_every": 0, "keep_checkpoints": 0, "log_every": 1,
            "method": {"name": "lora", "r": 8}, "optim": {"lr": 3e-2, "warmup_steps": 0},
            "data": {"source": str(source), "val_limit": 8, "test_limit": 8, "max_length": max_length}, **over}
    return load_config(TrainConfig, data=data)


def val_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.mark.parametrize("rows", [alpaca_rows, chat_rows])
def test_lora_on_alpaca_and_chat_records_lowers_the_validation_loss(tmp_path: Path, tiny_model_dir: Path,
                                                                     rows) -> None:
    source = write(tmp_path / "data.jsonl", rows(160))
    result = train(run_config(tmp_path, tiny_model_dir, source), log=lambda *_: None)
    first, *_, last = val_losses(tmp_path / "run")
    assert last < first
    m = result.metrics
    assert m["templates"] == [rows.__name__.split("_")[0].replace("chat", "messages")]
    assert m["chat_template_sha256"] == chat_template.template_sha256(result.tokenizer) and m["train_on"] == "all_assistant"
    assert {"rouge1", "bleu"} <= set(m["test"])  # the last assistant turn is the reference


def test_packing_trains_on_the_same_examples_in_fewer_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = write(tmp_path / "data.jsonl", chat_rows(160))
    metrics = train(run_config(tmp_path, tiny_model_dir, source, max_length=512, packing=True, max_steps=6,
                                  eval_every=0),
                       log=lambda *_: None).metrics
    assert metrics["packed_rows"] < metrics["train_examples"] / 2
    assert metrics["padding_fraction"] < 0.25


def test_a_base_model_trains_with_a_named_chat_format_that_inference_reuses(tmp_path: Path,
                                                                            tiny_plain_model_dir: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    source = write(tmp_path / "data.jsonl", chat_rows(80))
    cfg = run_config(tmp_path, tiny_plain_model_dir, source, max_steps=2, eval_every=0)
    with pytest.raises(Exception, match="no chat template.*data.chat_format"):
        train(cfg, log=lambda *_: None)
    cfg.data.chat_format = "plain"
    train(cfg, log=lambda *_: None, overwrite=True)
    _, tok = load_adapted(str(tiny_plain_model_dir), str(tmp_path / "run" / "adapter"))
    assert tok.chat_template == chat_template.FALLBACKS["plain"]
    assert main(["data", "inspect", str(tmp_path / "run"), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "is the one the run trained with" in out and "[[" in out and "### Assistant:" in out
    (tmp_path / "run" / "adapter" / "chat_template.jinja").write_text(chat_template.FALLBACKS["chatml"])
    assert main(["data", "inspect", str(tmp_path / "run")]) == 2
    assert "is not the one" in capsys.readouterr().err


def test_data_inspect_counts_and_marks_trained_tokens(tmp_path: Path, tiny_model_dir: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    source = write(tmp_path / "chat.jsonl", chat_rows(20))
    page = tmp_path / "inspect.html"
    assert main(["data", "inspect", str(source), "--model", str(tiny_model_dir), "-n", "2", "--html", str(page),
                 "--train-on", "last_assistant"]) == 0
    out = capsys.readouterr().out
    blocks = [line for line in out.splitlines() if line.startswith("[[") or "[[" in line]
    assert len(blocks) == 2 and all(line.count("[[") == 1 for line in blocks)  # last assistant turn only
    assert "16 records -> 16 examples" in out  # the train split of 20 rows
    html = page.read_text()
    assert html.count("<figure") == 2 and "class='tok trained'" in html
