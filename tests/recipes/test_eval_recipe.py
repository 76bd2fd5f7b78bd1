"""`instructune eval` end to end on a tiny model: every setting on the same examples, outputs written."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from instructune.cli import main

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    metrics: [accuracy, f1]
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""


def toy(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": f"film {i} was {'good' if i % 2 else 'bad'}",
                                        "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(n)))
    tpl = tmp_path / "t.yaml"
    tpl.write_text(TEMPLATES)
    return data, tpl


def test_eval_every_shot_setting_on_the_same_examples(tmp_path: Path, tiny_model_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, tpl = toy(tmp_path)
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--template-file", str(tpl),
                 "--template", "mood", "--shots", "0,1,2", "--limit", "4", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert [r["shots"] for r in report["results"]] == [0, 1, 2]
    ids = [[p["id"] for p in r["predictions"]] for r in report["results"]]
    assert len(ids[0]) == 4 and ids[0] == ids[1] == ids[2]
    for r in report["results"]:
        assert 0 <= r["metrics"]["accuracy"] <= 1 and "f1" in r["metrics"]
    with open(out / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert "accuracy" in capsys.readouterr().out


def test_eval_base_and_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter = tmp_path / "ad"
    model.save_pretrained(adapter)
    data, tpl = toy(tmp_path)
    from instructune.evaluation.settings import EvalSettings
    from instructune.recipes.evaluate import evaluate
    settings = EvalSettings.of(str(data), "mood", template_file=str(tpl), limit=4, mode="likelihood")
    report = evaluate([str(tiny_model_dir)], [str(adapter)], settings, log=lambda *_: None)
    base, tuned = report["results"]
    assert base["setting"] == str(tiny_model_dir) and "ad" in tuned["setting"]
    # the adapter changes the model: reference cross-entropy differs from the base's
    assert base["metrics"]["cross_entropy"] != pytest.approx(tuned["metrics"]["cross_entropy"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--shots", "a,b"], "--shots must be comma-separated integers"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--template", "nope"], "nope"),
])
def test_eval_bad_arguments(args: list[str], message: str, tmp_path: Path, tiny_model_dir: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    data, tpl = toy(tmp_path)
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--template-file", str(tpl),
            "--template", "mood"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_eval_scores_the_test_rows_a_run_held_out(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A run split with seed 3: eval, given that run (or its task and split), scores exactly its test rows."""
    from instructune.config import load_config
    from instructune.models import load_model
    from instructune.training.config import TrainConfig
    from instructune.training.run_data import RunData

    data, tpl = toy(tmp_path, n=120)
    run, empty = tmp_path / "run", tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["train", str(empty), f"model={tiny_model_dir}", f"output_dir={run}", f"data.source={data}",
                 f"data.template_file={tpl}", "data.templates=[mood]", "data.seed=3", "data.test_limit=null",
                 "max_steps=1", "eval_every=0", "save_every=0", "keep_checkpoints=0", "eval_mode=likelihood"]) == 0
    cfg = load_config(TrainConfig, run / "config.yaml")
    _, tok = load_model(str(tiny_model_dir))
    [held_out] = RunData.build(cfg, tok, lambda *_: None).evals
    run_ids = sorted(r["id"] for r in held_out.test)

    def scored(*args: str) -> list[str]:
        out = tmp_path / "eval"
        assert main(["eval", "--model", str(tiny_model_dir), "--mode", "likelihood", "--out", str(out), *args]) == 0
        return sorted(p["id"] for p in json.loads((out / "eval.json").read_text())["results"][0]["predictions"])

    assert scored("--run", str(run)) == run_ids
    # without --out, a run's evaluation is written beside it (a second run's does not overwrite it)
    assert main(["eval", "--model", str(tiny_model_dir), "--mode", "likelihood", "--run", str(run)]) == 0
    assert (run / "eval" / "eval.json").exists()
    assert scored("--data", str(data), "--template-file", str(tpl), "--template", "mood", "--data-seed", "3") == run_ids
    # another split seed holds out other rows: the seed is what makes them the run's
    assert scored("--data", str(data), "--template-file", str(tpl), "--template", "mood") != run_ids


def test_eval_and_generate_take_a_registered_adapter_by_name(tmp_path: Path, tiny_model_dir: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from instructune import progress
    from instructune.adapters.merge import random_lora
    from instructune.adapters.registry import register_adapter

    register_adapter("mood-lora", random_lora(tiny_model_dir, tmp_path / "adapter", seed=1, targets=("q_proj",)))
    monkeypatch.setattr(progress, "STATUS_EVERY", 0.0)  # a status line at every batch: this run lasts a second
    data, tpl = toy(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", "mood-lora", "--data", str(data),
                 "--template-file", str(tpl), "--template", "mood", "--limit", "4", "--out", str(out)]) == 0
    settings = [r["setting"] for r in json.loads((out / "eval.json").read_text())["results"]]
    assert settings == [str(tiny_model_dir), f"{tiny_model_dir} + mood-lora"]
    err = capsys.readouterr().err  # outside a terminal, generation and scoring report progress in lines
    assert re.search(r"generate: 4/4 examples, \d+ s\n", err) and "score: 4/4 examples" in err
    assert main(["generate", "--model", str(tiny_model_dir), "--adapter", "mood-lora", "--max-new-tokens", "2",
                 "hello"]) == 0
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", "nope-lora", "--data", str(data),
                 "--template-file", str(tpl)]) == 2
    assert "no adapter named 'nope-lora' in the registry (registered: mood-lora)" in capsys.readouterr().err
