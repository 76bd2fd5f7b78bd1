"""The retention suite's pieces: drops per measure from two scorings, its task type, and the held-out split
every measure reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructune.config import load_config
from instructune.data.task import SplitSpec
from instructune.errors import InstructuneError
from instructune.forgetting.kinds import general_probe, text_perplexity
from instructune.forgetting.measures import held_out_texts, probe_prompts
from instructune.forgetting.suite import RetentionSuite, RetentionTask, drops, fixed_examples, suite_spec


def test_drops_follow_each_measures_direction() -> None:
    before = {"measures": {"headlines": {"metric": "rougeL", "scores": [0.4, 0.2], "mean": 0.3},
                           "probe": {"metric": "cross_entropy", "scores": [1.0, 2.0], "mean": 1.5}}}
    after = {"measures": {"headlines": {"metric": "rougeL", "scores": [0.1, 0.1], "mean": 0.1},
                          "probe": {"metric": "cross_entropy", "scores": [1.5, 2.5], "mean": 2.0}}}
    out = drops(before, after, samples=200, seed=0)
    # ROUGE-L is higher-is-better: 0.3 -> 0.1 is a drop of +0.2; cross-entropy rising by 0.5 is a drop of +0.5
    assert out["headlines"]["drop"] == pytest.approx(0.2) and out["probe"]["drop"] == pytest.approx(0.5)
    assert (out["headlines"]["before"], out["headlines"]["after"]) == (0.3, 0.1)
    assert out["probe"]["low"] == pytest.approx(0.5) == out["probe"]["high"]  # every example rose by 0.5
    assert out["headlines"]["n"] == 2


def test_a_retention_task_is_a_task_of_one_template() -> None:
    task = load_config(RetentionTask, data={"source": "bbc-news", "template": "topic", "mode": "likelihood"})
    assert task.task_spec().templates == ["topic"] and task.limit == 100
    with pytest.raises(InstructuneError, match="template: required"):
        load_config(RetentionTask, data={"source": "bbc-news"})
    with pytest.raises(InstructuneError, match="scored with one `template`"):
        load_config(RetentionTask, data={"source": "bbc-news", "template": "topic", "templates": ["topic"]})


def test_a_suites_texts_and_task_rows_come_from_the_split_it_is_built_for(toy_tasks: tuple[Path, Path, Path]) -> None:
    _, keep, tpl = toy_tasks
    task = RetentionTask(str(keep), template="title", template_file=str(tpl), limit=50)
    texts = {h: set(held_out_texts(str(keep), SplitSpec(), 50, 120, 0, held_out=h)) for h in ("validation", "test")}
    rows = {h: {r["id"] for r in fixed_examples(task.task_spec(), "title", SplitSpec(), 50, 0, held_out=h)[0]}
            for h in ("validation", "test")}
    assert texts["validation"] and texts["test"] and not texts["validation"] & texts["test"]
    assert rows["validation"] and rows["test"] and not rows["validation"] & rows["test"]
    spec = suite_spec([task], general_probe.Options(2, 4), text_perplexity.Options(str(keep), 50, 120), {})
    suite = RetentionSuite.build(spec, SplitSpec(), 0, held_out="validation")
    assert {r["id"] for r in suite.tasks[f"{keep}/title"][0]} == rows["validation"]
    assert set(suite.texts) == texts["validation"] and suite.probe == probe_prompts("validation", 2)
