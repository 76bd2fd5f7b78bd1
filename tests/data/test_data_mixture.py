"""Multi-task mixtures: strategy probabilities, realised proportions, templates, determinism, resume, loading."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from instructune.config import load_config
from instructune.data.mixture import (
    MixtureConfig,
    MixtureSampler,
    build_mixture,
    default_epoch_size,
    task_names,
    task_probabilities,
)
from instructune.errors import InstructuneError

SIZES = [10, 100, 1000]
DRAWS = 10_000
EXPECTED = {  # by hand, from the formulas in the module docstring
    "proportional": [10 / 1110, 100 / 1110, 1000 / 1110],
    "capped": [10 / 210, 100 / 210, 100 / 210],  # cap = 100
    "temperature": [math.sqrt(n) / (math.sqrt(10) + 10 + math.sqrt(1000)) for n in SIZES],  # T = 2
    "weights": [0.5, 0.3, 0.2],
}


def toy_pools(sizes: list[int], templates: tuple[str, ...] = ("t",)) -> list[dict[str, list[int]]]:
    """Task t holds sizes[t] examples under each template; indices are unique over all pools."""
    pools, start = [], 0
    for n in sizes:
        pool = {}
        for tid in templates:
            pool[tid] = list(range(start, start + n))
            start += n
        pools.append(pool)
    return pools


def sampler(sizes: list[int], probs: list[float], per_epoch: int = DRAWS, seed: int = 0,
            templates: tuple[str, ...] = ("t",), template_weights: dict | None = None) -> MixtureSampler:
    return MixtureSampler(toy_pools(sizes, templates), probs, [template_weights] * len(sizes), per_epoch, seed,
                          names=[f"task{i}" for i in range(len(sizes))])


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_strategy_probabilities_and_realised_proportions(strategy: str) -> None:
    probs = task_probabilities(SIZES, strategy, cap=100, temperature=2.0, weights=[5, 3, 2])
    assert probs == pytest.approx(EXPECTED[strategy], abs=1e-12)
    counts = sampler(SIZES, probs).realised(0)
    shares = [counts[f"task{i}"]["t"] / DRAWS for i in range(3)]
    assert shares == pytest.approx(EXPECTED[strategy], abs=0.01)


def test_temperature_one_is_proportional_and_large_is_uniform_without_overflow() -> None:
    assert task_probabilities(SIZES, "temperature", 1, 1.0, None) == pytest.approx(EXPECTED["proportional"])
    assert task_probabilities(SIZES, "temperature", 1, 1e6, None) == pytest.approx([1 / 3] * 3, abs=1e-5)
    tiny_t = task_probabilities([1000, 900], "temperature", 1, 0.001, None)  # 1000^1000 overflows a float
    assert tiny_t[0] > 0.999 and sum(tiny_t) == pytest.approx(1)


def test_empty_task_gets_zero_and_bad_inputs_name_the_fix() -> None:
    assert task_probabilities([0, 30], "weights", 1, 1.0, [1, 1]) == [0.0, 1.0]
    with pytest.raises(InstructuneError, match="one `weight` per task"):
        task_probabilities(SIZES, "weights", 1, 1.0, None)
    with pytest.raises(InstructuneError, match="choose one of proportional, capped"):
        task_probabilities(SIZES, "uniform", 1, 1.0, None)


def test_default_epoch_size() -> None:
    assert default_epoch_size(SIZES, "capped", 100) == 210
    assert default_epoch_size(SIZES, "temperature", 100) == 1110


@pytest.mark.parametrize("weights", [None, {"a": 6, "b": 3, "c": 1}])
def test_templates_drawn_evenly_or_by_weight(weights: dict | None) -> None:
    s = sampler([50, 500], [0.5, 0.5], templates=("a", "b", "c"), template_weights=weights)
    counts = s.realised(0)
    expected = [1 / 3] * 3 if weights is None else [0.6, 0.3, 0.1]
    for task, n in Counter(s.names[0 if i < 150 else 1] for i in s.epoch(0)).items():
        shares = [counts[task][tid] / n for tid in "abc"]
        assert shares == pytest.approx(expected, abs=0.01), task


def test_template_weights_must_cover_the_templates() -> None:
    with pytest.raises(InstructuneError, match=r"task 'task0'.*each of its templates \['a', 'b'\]"):
        sampler([5], [1.0], templates=("a", "b"), template_weights={"a": 1})


def test_same_seed_same_draws_other_epoch_or_seed_differ_and_resume_recomputes() -> None:
    probs = EXPECTED["capped"]
    first = sampler(SIZES, probs, per_epoch=210, seed=3)
    draws = {e: first.epoch(e) for e in range(3)}
    restarted = sampler(SIZES, probs, per_epoch=210, seed=3)  # a new process after a crash in epoch 2
    assert restarted.epoch(2) == draws[2] and restarted.epoch(0) == draws[0]
    assert draws[0] != draws[1] != draws[2]
    assert sampler(SIZES, probs, per_epoch=210, seed=4).epoch(0) != draws[0]
    assert first.realised(1) == restarted.realised(1)


def test_without_replacement_within_epoch_then_restarts() -> None:
    # capped, cap 100, 210 draws: the big task expects 100 of its 1000 examples, so none may repeat;
    # the small one is drawn past its size, so its examples repeat as evenly as possible
    s = sampler(SIZES, EXPECTED["capped"], per_epoch=210)
    idx = s.epoch(0)
    for pool in toy_pools(SIZES):
        drawn = Counter(i for i in idx if i in set(pool["t"]))
        assert len(drawn) == min(sum(drawn.values()), len(pool["t"]))  # no repeat until the pool is used up
        assert max(drawn.values()) - min(drawn.values()) <= 1  # each pass uses every example once
    big = Counter(i for i in idx if i >= 110)
    assert max(big.values()) == 1 and sum(big.values()) > 80
    up = sampler([10, 10], [0.9, 0.1], per_epoch=100)  # task0 upsampled ~9x: each example 8 to 10 times
    reps = Counter(i for i in up.epoch(0) if i < 10)
    assert set(reps) == set(range(10)) and max(reps.values()) - min(reps.values()) <= 1


def test_config_problems_reported_all_at_once() -> None:
    data = {"strategy": "weights", "cap": 0, "temperature": -1, "examples_per_epoch": 0,
            "tasks": [{"source": "rotten-tomatoes", "weight": 2},
                      {"source": "bbc-news", "templates": ["topic"], "template_weights": {"headline": 1}},
                      {"source": "x.jsonl", "weight": -1}]}
    with pytest.raises(InstructuneError) as e:
        load_config(MixtureConfig, data=data)
    msg = str(e.value)
    assert "(6 problems)" in msg
    for part in ["cap must be at least 1", "temperature must be > 0", "examples_per_epoch must be at least 1",
                 "missing on tasks[1]", "tasks[2].weight must be >= 0",
                 "tasks[1].template_weights names headline"]:
        assert part in msg, part
    ok = load_config(MixtureConfig, data={"tasks": [{"source": "rotten-tomatoes"}], "strategy": "temperature"})
    assert ok.strategy == "temperature" and ok.tasks[0].templates == [] and ok.cap == 3000
    with pytest.raises(InstructuneError, match="template_weights names headline, not in templates"):
        load_config(MixtureConfig, data={"tasks": data["tasks"][1:2]})


def test_task_names_from_packs_files_and_repeats() -> None:
    assert task_names(["rotten-tomatoes", "data/reviews.jsonl", "rotten-tomatoes", "x/built/", "a.csv"]) == [
        "rotten-tomatoes", "reviews", "rotten-tomatoes-2", "built", "a"]


TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: "Review: {{ text }}\\nPositive or negative?"
  - id: stars
    task: classification
    choices: {pos: good, neg: bad}
    prompt: "{{ text }}\\nWas it good or bad?"
"""


def toy_file(folder: Path, name: str, n: int) -> Path:
    rng = random.Random(n)
    words = ["great", "dull", "moving", "boring", "funny", "bad"]
    rows = [{"text": f"a {rng.choice(words)} film number {i}", "label": "pos" if i % 2 else "neg"} for i in range(n)]
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_mixture_on_two_files(tmp_path: Path) -> None:
    from instructune.testing import tiny_tokenizer

    (tmp_path / "t.yaml").write_text(TEMPLATES)
    small, big = toy_file(tmp_path, "small", 20), toy_file(tmp_path, "big", 60)
    cfg = load_config(MixtureConfig, data={"strategy": "proportional", "tasks": [
        {"source": str(small), "template_file": str(tmp_path / "t.yaml")},
        {"source": str(big), "template_file": str(tmp_path / "t.yaml"), "templates": ["mood"]},
        {"source": str(small), "template_file": str(tmp_path / "t.yaml"), "templates": ["stars"]}]})
    mix = build_mixture(cfg, tiny_tokenizer(), max_length=64, seed=0, data_seed=1, fractions=[0.5, 0.25, 0.25])
    assert list(mix.val) == list(mix.test) == list(mix.templates) == ["small", "big", "small-2"]
    tasks = Counter((e["task"], e["template"]) for e in mix.examples)
    assert tasks == {("small", "mood"): 10, ("small", "stars"): 10, ("big", "mood"): 30, ("small-2", "stars"): 10}
    assert all(set(e) == {"id", "input_ids", "labels", "task", "template"} for e in mix.examples)
    assert mix.dropped == {"small": 0, "big": 0, "small-2": 0}
    assert list(mix.templates["small"]) == ["mood", "stars"] and list(mix.templates["big"]) == ["mood"]
    assert len(mix.val["big"]) + len(mix.test["big"]) == 30 and min(len(mix.val["big"]), len(mix.test["big"])) > 10
    assert {r["template"] for r in mix.val["big"] + mix.test["big"]} == {"mood"}
    assert {r["template"] for r in mix.test["small"]} == {"mood", "stars"}
    assert {r["template"] for r in mix.val["small-2"]} == {"stars"}
    assert mix.sampler.probabilities == pytest.approx([20 / 60, 30 / 60, 10 / 60])
    idx = mix.sampler.epoch(0)
    assert len(idx) == 60 and all(0 <= i < len(mix.examples) for i in idx)
    realised = mix.sampler.realised(0)
    for task, per in realised.items():
        assert sum(per.values()) == sum(mix.examples[i]["task"] == task for i in idx)
