"""EvalSettings: the flat keywords of `instructune eval` become a task and a split; every bad field is reported."""

from __future__ import annotations

import pytest

from instructune.data.task import SplitSpec, TaskSpec
from instructune.errors import InstructuneError
from instructune.evaluation.settings import EvalSettings


def test_keywords_make_a_task_and_a_split() -> None:
    s = EvalSettings.of("reviews.jsonl", "mood", "validation", template_file="t.yaml", data_seed=3, limit=4)
    assert s.task == TaskSpec("reviews.jsonl", ["mood"], "t.yaml", "auto")
    assert s.split == SplitSpec(3, [0.8, 0.1, 0.1]) and s.held_out == "validation" and s.limit == 4
    # a data format named as the template is the task's format, with no template ids
    fmt = EvalSettings.of("chat.jsonl", "messages")
    assert fmt.task == TaskSpec("chat.jsonl", [], None, "messages") and fmt.template is None
    # the templates a run's dataset was built with, not the scored one alone
    assert EvalSettings.of("d", "a", built_with=["a", "b"]).task.templates == ["a", "b"]


def test_every_bad_field_is_named() -> None:
    s = EvalSettings(TaskSpec(""), SplitSpec(fractions=[0.5, 0.5]), held_out="dev", shots=[-1], limit=0,
                     mode="guess", batch_size=0, max_new_tokens=0, dtype="int8")
    names = [p.split(" ")[0] for p in s.problems()]
    assert names == ["split.fractions", "task.source", "held_out", "shots", "limit", "batch_size", "max_new_tokens",
                     "mode", "dtype"]
    assert EvalSettings(TaskSpec("d")).problems() == []


def test_unknown_keyword_names_the_settings() -> None:
    with pytest.raises(InstructuneError, match="unknown evaluation setting.*limt.*limit"):
        EvalSettings.of("d", limt=5)
