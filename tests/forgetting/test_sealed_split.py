"""The test split stays sealed: canaries on every held-out read (a built dataset's split rows, the probe's
half of the general prompts, a text probe's split) fail loudly when something that chooses reads test
rows. What chooses (a sweep's trials, `select: tradeoff`, budget early stopping) reads validation; a
sweep reads test rows only in the final scoring of its chosen configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from instructune.cli import main
from instructune.config import load_config
from instructune.data import task as task_module
from instructune.forgetting.kinds import general_probe as probe_kind
from instructune.forgetting.kinds import text_perplexity as text_kind
from instructune.recipes import sweep as sweep_module
from instructune.training.config import TrainConfig
from instructune.training.trainer import train


class Canary:
    """Records every held-out read as (phase, what, split); a test read while `test_allowed` says no raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, test_allowed: object = lambda what: False) -> None:
        self.reads: list[tuple[str, str, str]] = []
        self.phase, self.test_allowed = "search", test_allowed
        read_split, probe, texts = task_module.read_split, probe_kind.probe_prompts, text_kind.held_out_texts

        def guarded_read(folder: Path, split: str) -> list[dict]:
            stats = Path(folder) / "stats.json"
            source = json.loads(stats.read_text()).get("source", "") if stats.exists() else str(folder)
            self.note(Path(source).name, split)
            return read_split(folder, split)

        def guarded_probe(held_out: str, limit: int | None = None) -> list[str]:
            self.note("general-prompts", held_out)
            return probe(held_out, limit)

        def guarded_texts(source: str, *args: object, held_out: str) -> list[str]:
            self.note(f"texts:{Path(source).name}", held_out)
            return texts(source, *args, held_out=held_out)

        monkeypatch.setattr(task_module, "read_split", guarded_read)  # under every load_split
        monkeypatch.setattr(probe_kind, "probe_prompts", guarded_probe)  # what each kind reads its inputs with
        monkeypatch.setattr(text_kind, "held_out_texts", guarded_texts)

    def note(self, what: str, split: str) -> None:
        self.reads.append((self.phase, what, split))
        if split == "test" and not self.test_allowed(what):
            raise AssertionError(f"test rows of {what} read during {self.phase}")

    def split_of(self, what: str, phase: str | None = None) -> set[str]:
        return {split for p, w, split in self.reads if w == what and (phase is None or p == phase)}


SUITE = {"probe_prompts": 2, "probe_tokens": 4, "text_limit": 2}


def retention(keep: Path, tpl: Path) -> list[dict]:
    return [{"source": str(keep), "template": "title", "template_file": str(tpl), "limit": 4}]


@pytest.mark.parametrize("final", [True, False])
def test_a_sweep_reads_test_rows_only_in_the_final_scoring_of_its_choice(
        final: bool, tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    target, keep, tpl = toy_tasks
    canary = Canary(monkeypatch, test_allowed=lambda what: canary.phase == "final")
    score_final = sweep_module._final

    def final_scoring(*args: object, **kwargs: object) -> dict:
        canary.phase = "final"
        try:
            return score_final(*args, **kwargs)
        finally:
            canary.phase = "after"

    monkeypatch.setattr(sweep_module, "_final", final_scoring)
    cfg = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "sweep"), "batch_size": 8, "max_steps": 2,
           "eval_every": 1, "eval_mode": "likelihood", "optim": {"warmup_steps": 0},
           "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                    "test_limit": 8},
           "sweep": {"trials": 2, "pruner": "none", "final": final, "params": {"optim.lr": [1.0e-3, 1.0e-1]},
                     "forgetting": {"retention": retention(keep, tpl), "text_source": str(keep), **SUITE}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "sweep.yaml")]) == 0

    assert not [r for r in canary.reads if r[2] == "test" and r[0] != "final"]
    for what in ("news.jsonl", "general-prompts", "texts:news.jsonl"):  # the trials' suite: validation only
        assert canary.split_of(what, "search") == {"validation"}
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    for t in report["trials"]:  # each trial's objective is the mean of its measures' relative drops
        assert t["values"][1] == pytest.approx(sum(t["relative_drops"].values()) / len(t["relative_drops"]))
    if not final:
        assert canary.split_of("reviews.jsonl", "final") == set() and report["test_forgetting"] is None
        return
    for what in ("reviews.jsonl", "news.jsonl", "general-prompts", "texts:news.jsonl"):
        assert "test" in canary.split_of(what, "final")
    measures = report["test_forgetting"]["measures"]
    assert set(measures) == {f"{keep}/title", "general-probe", "text-perplexity"}
    # the tiny model's ROUGE-L is 0 before training: nothing to lose, so a gain from it counts 0
    shares = [m["drop"] / abs(m["before"]) if m["before"] else max(m["drop"], 0.0) for m in measures.values()]
    assert report["test_forgetting"]["mean_relative_drop"] == pytest.approx(sum(shares) / 3)


def run_config(tmp_path: Path, model: Path, toy_tasks: tuple[Path, Path, Path], **over: object) -> TrainConfig:
    target, keep, tpl = toy_tasks
    data = {"model": str(model), "output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 8,
            "eval_every": 2, "log_every": 1, "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood",
            "optim": {"lr": 1e-2, "warmup_steps": 0}, "select": "tradeoff",
            "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                     "test_limit": 8},
            "retention": {"tasks": retention(keep, tpl), "text_source": str(keep), **SUITE}, **over}
    return load_config(TrainConfig, data=data)


def watched_on_validation(canary: Canary) -> None:
    """The run's retention suite read validation rows of every measure, and no test row of any of them
    (the target's own test rows, its final report, are the only test rows a run reads)."""
    for what in ("news.jsonl", "general-prompts", "texts:news.jsonl"):
        assert canary.split_of(what) == {"validation"}
    assert {w for _, w, split in canary.reads if split == "test"} <= {"reviews.jsonl"}


def test_tradeoff_selection_never_reads_test_rows_of_retention_tasks(tmp_path: Path, tiny_model_dir: Path,
                                                                     toy_tasks: tuple[Path, Path, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    canary = Canary(monkeypatch, test_allowed=lambda what: what == "reviews.jsonl")
    cfg = run_config(tmp_path, tiny_model_dir, toy_tasks, forgetting_budget=0.5)
    metrics = train(cfg, log=lambda *_: None).metrics
    assert metrics["selection"]["select"] == "tradeoff"
    watched_on_validation(canary)


def test_budget_early_stopping_never_reads_test_rows_of_retention_tasks(tmp_path: Path, tiny_model_dir: Path,
                                                                        toy_tasks: tuple[Path, Path, Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    canary = Canary(monkeypatch, test_allowed=lambda what: what == "reviews.jsonl")
    # every validation is over the budget, forced (a budget below 0 is refused as a config problem)
    monkeypatch.setattr("instructune.training.loop.over_budget", lambda scores, budget: ["forced"])
    cfg = run_config(tmp_path, tiny_model_dir, toy_tasks, forgetting_budget=0.0, budget_patience=2)
    metrics = train(cfg, log=lambda *_: None).metrics
    assert metrics["stopped"] == "forgetting_budget" and metrics["steps"] == 4
    watched_on_validation(canary)
