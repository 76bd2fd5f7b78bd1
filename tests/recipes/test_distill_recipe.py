"""`instructune data distill`: a teacher's greedy answers become alpaca or messages training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.cli import main


def test_the_teachers_answers_replace_the_references_and_the_file_trains(tmp_path: Path, tiny_model_dir: Path,
                                                                         teacher: Path,
                                                                         toy_tasks: tuple[Path, Path, Path]) -> None:
    from instructune.data.task import SplitSpec, TaskSpec, load_split, subset
    from instructune.evaluation.evaluate import build_prompts
    from instructune.evaluation.generate import generate
    from instructune.models import load_model

    target, _, tpl = toy_tasks
    out = tmp_path / "teacher.jsonl"
    assert main(["data", "distill", str(target), "--teacher", str(teacher), "--templates-file", str(tpl),
                 "--template", "mood", "--limit", "6", "--max-new-tokens", "5", "--dtype", "fp32",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the same prompts, each answered alone (batch 1): the batched, left-padded run must give the same text
    records = subset(load_split(TaskSpec(str(target), ["mood"], str(tpl)), SplitSpec(), "train"), 6, 0)
    model, tok = load_model(str(teacher))
    alone = [generate(model, tok, build_prompts(tok, [r], 0, None, 0, raw=False), max_new_tokens=5, batch_size=1)[0]
             for r in records]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert [r["instruction"] for r in rows] == [r["prompt"] for r in records]
    assert [r["output"] for r in rows] == [a.strip() for a in alone]
    assert all(r["output"] not in ("positive", "negative") for r in rows)  # the teacher's, not the references
    # the student trains on the file as on any alpaca data
    empty = tmp_path / "none.yaml"
    empty.write_text("")
    assert main(["train", str(empty), f"model={tiny_model_dir}", f"output_dir={tmp_path / 'student'}",
                 f"data.source={out}", "data.fractions=[0.5,0.25,0.25]", "max_steps=2", "eval_every=0",
                 "save_every=0", "keep_checkpoints=0"]) == 0
    assert json.loads((tmp_path / "student" / "metrics.json").read_text())["steps"] == 2


@pytest.mark.parametrize(("flag", "value", "message"), [("--max-new-tokens", "0", "--max-new-tokens must be at least 1"),
                                                       ("--limit", "0", "--limit must be at least 1")])
def test_bad_settings_are_one_paragraph(tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path],
                                        capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str) -> None:
    target, _, tpl = toy_tasks
    assert main(["data", "distill", str(target), "--teacher", str(tiny_model_dir), "--templates-file", str(tpl),
                 flag, value, "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mostly_empty_answers_are_written_and_flagged(tmp_path: Path, teacher: Path, toy_tasks: tuple[Path, Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a teacher that reads prompts in another chat format than it trained with ends most answers at once
    from instructune.data.task import TaskSpec
    from instructune.recipes import distill as recipe

    monkeypatch.setattr(recipe, "generate", lambda model, tok, prompts, **kw: ["positive"] + [" "] * (len(prompts) - 1))
    target, _, tpl = toy_tasks
    said: list[str] = []
    summary = recipe.distill(str(teacher), TaskSpec(str(target), ["mood"], str(tpl)), tmp_path / "t.jsonl", limit=4,
                             dtype="fp32", log=said.append)
    assert (summary["written"], summary["empty"]) == (1, 3)
    assert any("most answers were empty (3 of 4)" in m for m in said)
    said.clear()
    monkeypatch.setattr(recipe, "generate", lambda model, tok, prompts, **kw: ["positive"] * (len(prompts) - 1) + [""])
    recipe.distill(str(teacher), TaskSpec(str(target), ["mood"], str(tpl)), tmp_path / "u.jsonl", limit=4,
                   dtype="fp32", log=said.append)
    assert not any("warning" in m for m in said)
