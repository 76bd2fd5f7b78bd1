"""Forgetting watched while training: retention drops logged at the right steps, best/ chosen on the
trade-off as a hand computation chooses, and a run stopped when the budget is exceeded K times in a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.forgetting import monitor as retention
from instructune.training.config import TrainConfig
from instructune.training.trainer import train


def config(tmp_path: Path, model: Path, toy_tasks: tuple[Path, Path, Path], **over: object) -> TrainConfig:
    target, keep, tpl = toy_tasks
    data = {"model": str(model), "output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 8,
            "eval_every": 2, "log_every": 1, "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood",
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                     "test_limit": 8},
            "retention": {"tasks": [{"source": str(keep), "template": "title", "template_file": str(tpl),
                                     "limit": 4}], "probe_prompts": 2, "probe_tokens": 4}, **over}
    return load_config(TrainConfig, data=data)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_retention_drops_are_logged_at_validations_and_every_n_steps(tmp_path: Path, tiny_model_dir: Path,
                                                                     toy_tasks: tuple[Path, Path, Path]) -> None:
    cfg = config(tmp_path, tiny_model_dir, toy_tasks, eval_every=4, retention_every=3)
    train(cfg, log=lambda *_: None)
    rows = log_rows(cfg.output_dir)
    keys = {f"drop/{toy_tasks[1]}/title", "drop/general-probe"}
    # every retention_every steps, and at validations beside the validation scores, under the same name
    measured = [(r["step"], "val_loss" in r) for r in rows if keys <= set(r)]
    assert measured == [(3, False), (4, True), (6, False), (8, True)]
    assert not [k for r in rows for k in r if k.startswith("val_drop")]
    assert all(isinstance(r[k], float) for r in rows if keys <= set(r) for k in keys)
    assert all(k.replace("drop/", "drop_relative/") in r for r in rows if keys <= set(r) for k in keys)  # beside
    metrics = json.loads((cfg.output_dir / "metrics.json").read_text())
    assert metrics["selection"]["select"] == "target" and metrics["selection"]["validations_over_budget"] == 0


def scripted(series: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of Monitor.drops returns the next relative drop of `series` for the probe (tasks unchanged at
    0); its raw drop is 10x as large (an original cross-entropy of 10 nats), so a budget read against the raw
    drops would choose differently."""
    calls = iter(series)

    def drops(self: retention.Monitor, model: object) -> dict[str, float]:
        share = next(calls)
        return {"drop/general-probe": 10.0 * share, "drop_relative/general-probe": share,
                "drop/news/title": 0.0, "drop_relative/news/title": 0.0}

    monkeypatch.setattr(retention.Monitor, "drops", drops)


def test_tradeoff_selection_picks_the_best_validation_within_the_budget(tmp_path: Path, tiny_model_dir: Path,
                                                                        toy_tasks: tuple[Path, Path, Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    scripted([0.00, 0.20, 0.05, 0.30], monkeypatch)  # validations at steps 2, 4, 6, 8
    cfg = config(tmp_path, tiny_model_dir, toy_tasks, select="tradeoff",
                 forgetting_budget={"general-probe": 0.1})
    metrics = train(cfg, log=lambda *_: None).metrics
    losses = {r["step"]: r["val_loss"] for r in log_rows(cfg.output_dir) if "val_loss" in r}
    within = [step for step, drop in zip([2, 4, 6, 8], [0.00, 0.20, 0.05, 0.30], strict=True) if drop <= 0.1]
    expected = min(within, key=lambda step: losses[step])  # the hand computation: lowest loss within budget
    assert metrics["validation"]["step"] == metrics["selection"]["step"] == expected
    assert metrics["selection"]["validations_over_budget"] == 2
    assert min(losses, key=losses.get) != expected or losses[expected] == min(losses.values())


def test_the_run_stops_after_k_validations_over_the_budget(tmp_path: Path, tiny_model_dir: Path,
                                                           toy_tasks: tuple[Path, Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    scripted([0.0, 0.5, 0.6, 0.7], monkeypatch)
    cfg = config(tmp_path, tiny_model_dir, toy_tasks, select="tradeoff", forgetting_budget=0.1, budget_patience=2)
    metrics = train(cfg, log=lambda *_: None).metrics
    assert metrics["stopped"] == "forgetting_budget" and metrics["steps"] == 6  # over at steps 4 and 6
    assert metrics["validation"]["step"] == 2


def test_the_budget_bounds_relative_drops() -> None:
    # the probe lost 0.5 nats of 2.0 (25%), the topic 0.2 of its 0.8 accuracy (25%): one budget means one share
    scores = {"loss": 1.0, "drop/general-probe": 0.5, "drop_relative/general-probe": 0.25,
              "drop/bbc-news/topic": 0.2, "drop_relative/bbc-news/topic": 0.25}
    assert retention.over_budget(scores, 0.3) == []
    assert retention.over_budget(scores, 0.2) == ["general-probe", "bbc-news/topic"]
    assert retention.over_budget(scores, {"general-probe": 0.3, "bbc-news/topic": 0.2}) == ["bbc-news/topic"]


@pytest.mark.parametrize(("over", "message"), [
    ({"select": "tradeoff"}, "select: tradeoff needs forgetting_budget"),
    ({"forgetting_budget": {"bbc-news/topic": 0.1}}, "forgetting_budget.bbc-news/topic: not a measure"),
    ({"retention_every": 50}, "retention_every 50 is larger than the run (8 steps)"),
    ({"retention": None, "select": "tradeoff", "forgetting_budget": 0.1}, "select: tradeoff needs `retention:`"),
    ({"retention": {"probe_prompts": 40}}, "retention.probe_prompts must be 0 to 32"),
])
def test_bad_retention_settings_are_refused_before_training(tmp_path: Path, tiny_model_dir: Path,
                                                            toy_tasks: tuple[Path, Path, Path], over: dict,
                                                            message: str) -> None:
    with pytest.raises(InstructuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, tiny_model_dir, toy_tasks, **over)
    assert not (tmp_path / "run").exists()


def test_a_retention_task_that_does_not_exist_fails_before_training(tmp_path: Path, tiny_model_dir: Path,
                                                                    toy_tasks: tuple[Path, Path, Path]) -> None:
    cfg = config(tmp_path, tiny_model_dir, toy_tasks, retention={"tasks": [
        {"source": str(tmp_path / "missing.jsonl"), "template": "title", "template_file": str(toy_tasks[2])}]})
    with pytest.raises(InstructuneError, match="missing.jsonl"):
        train(cfg, log=lambda *_: None)
    assert not (cfg.output_dir / "train_log.jsonl").exists()
