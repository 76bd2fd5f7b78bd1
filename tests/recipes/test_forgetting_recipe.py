"""`instructune forgetting` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.config import load_config
from instructune.recipes.forgetting import ForgettingConfig, forgetting


def test_multi_task_cure_mixes_target_and_retention(tmp_path: Path, toy_tasks: tuple[Path, Path, Path]) -> None:
    from instructune.errors import InstructuneError
    from instructune.recipes.forgetting import run_configs

    target, keep, tpl = toy_tasks
    data = {"train": {"model": "m", "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"]}},
            "retention": [{"source": str(keep), "template": "title", "template_file": str(tpl)},
                          {"source": "bbc-news", "template": "topic"}],
            "cures": [{"name": "multi-task", "target_weight": 0.6}]}
    cfg = load_config(ForgettingConfig, data=data)
    run = run_configs(cfg, tmp_path)["multi-task"]
    assert [(t.source, t.templates, t.weight) for t in run.mixture.tasks] == [
        (str(target), ["mood"], 0.6), (str(keep), ["title"], pytest.approx(0.2)), ("bbc-news", ["topic"], pytest.approx(0.2))]
    assert run.mixture.strategy == "weights"
    plain = run_configs(cfg, tmp_path)["full"]  # the baselines stay single-task
    assert plain.mixture is None
    data["cures"] = [{"name": "multi-task", "target_weight": 1.0}]
    with pytest.raises(InstructuneError, match="target_weight must be between 0 and 1"):
        run_configs(load_config(ForgettingConfig, data=data), tmp_path)


@pytest.mark.slow
def test_forgetting_recipe_runs_every_cure(tmp_path: Path, tiny_model_dir: Path,
                                          toy_tasks: tuple[Path, Path, Path]) -> None:
    target, keep, tpl = toy_tasks
    train = {"model": str(tiny_model_dir), "batch_size": 8, "max_steps": 4, "eval_every": 0, "save_every": 0,
             "optim": {"lr": 5e-3},
             "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8}}
    data = {"train": train, "output_dir": str(tmp_path / "f"), "target_limit": 8, "probe_prompts": 4,
            "probe_tokens": 6, "text_source": str(keep), "text_limit": 4, "bootstrap_samples": 200,
            "retention": [{"source": str(keep), "template": "title", "limit": 6, "template_file": str(tpl)}],
            "cures": [{"name": "l2sp", "train": {"method": {"name": "full"},
                                                 "regularizers": [{"name": "l2sp", "lam": 10.0}]}},
                      {"name": "multi-task", "target_weight": 0.75}]}
    cfg = load_config(ForgettingConfig, data=data)
    result = forgetting(cfg, log=lambda *_: None)
    names = [r["cure"] for r in result["cures"]]
    assert names == ["full", "lora", "l2sp", "multi-task"]
    # the multi-task cure trained on a mixture of the target and the task to keep, 3:1 by weight
    drawn = json.loads((tmp_path / "f" / "multi-task" / "metrics.json").read_text())["mixture_epoch0"]
    assert drawn is not None, "multi-task cure did not train on a mixture"
    counts = {task: sum(per_template.values()) for task, per_template in drawn.items()}
    assert set(counts) == {target.stem, keep.stem} and counts[target.stem] > counts[keep.stem] > 0
    report = json.loads((tmp_path / "f" / "forgetting.json").read_text())
    for row in report["cures"]:
        assert set(row["retention"]) == {f"{keep}/title", "general-probe", "text-perplexity"}
        for m in row["retention"].values():
            assert m["low"] <= m["drop"] <= m["high"]
        shares = [m["relative_drop"] for m in row["retention"].values()]  # beside the raw drops, and their mean
        assert row["mean_relative_drop"] == pytest.approx(sum(shares) / len(shares))
        assert row["trainable_params"] > 0 and row["peak_memory_mb"] > 0
    # the kept generation task's first answers, the original model's beside every cure's
    shown = report["answers"][f"{keep}/title"]
    assert 0 < len(shown) <= 4
    assert all(set(a["answers"]) == {"original", *names} and a["prompt"] and a["reference"] for a in shown)
    assert "| full |" in (tmp_path / "f" / "forgetting.md").read_text()
    assert "| peak MB | mean relative drop |" in (tmp_path / "f" / "forgetting.md").read_text()
    # cures are trained again, never resumed: no checkpoint was written
    assert not list((tmp_path / "f").glob("*/checkpoint-*")) and (tmp_path / "f" / "full" / "model").exists()


def test_more_probe_prompts_than_a_half_of_the_shipped_list_are_refused() -> None:
    from instructune.errors import InstructuneError

    with pytest.raises(InstructuneError, match="probe_prompts must be 0 to 32"):
        load_config(ForgettingConfig, data={"train": {}, "retention": [], "probe_prompts": 48})
