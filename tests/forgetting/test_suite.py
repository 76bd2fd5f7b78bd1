"""The retention suite's pieces: drops per measure from two scorings, and its task type."""

from __future__ import annotations

import pytest

from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.forgetting.suite import RetentionTask, drops


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
