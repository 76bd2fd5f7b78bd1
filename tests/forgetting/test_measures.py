"""Forgetting measures on hand-computed inputs: paired drops with bootstrap intervals, drops relative to the
original score and their mean, the probe's two halves, transfer matrices."""

from __future__ import annotations

import pytest

from instructune.errors import InstructuneError
from instructune.forgetting.measures import (
    all_probe_prompts,
    bootstrap_drop,
    mean_relative_drop,
    probe_prompts,
    relative_drop,
    transfer_measures,
)
from instructune.forgetting.suite import drops


def scored(metric: str, scores: list[float]) -> dict:
    return {"metric": metric, "scores": scores, "mean": sum(scores) / len(scores)}


def test_the_mean_relative_drop_puts_accuracy_and_nats_on_one_scale() -> None:
    # accuracy 0.8 -> 0.6 loses 0.2 of 0.8 = 25%; cross-entropy 2.0 -> 2.5 nats rises by 0.5 of 2.0 = 25%
    before = {"measures": {"topic": scored("accuracy", [1, 1, 1, 1, 0]), "probe": scored("cross_entropy", [2.0, 2.0])}}
    after = {"measures": {"topic": scored("accuracy", [1, 1, 1, 0, 0]), "probe": scored("cross_entropy", [2.5, 2.5])}}
    out = drops(before, after, samples=100, seed=0)
    assert out["topic"]["drop"] == pytest.approx(0.2) and out["probe"]["drop"] == pytest.approx(0.5)  # raw, kept
    assert out["topic"]["relative_drop"] == pytest.approx(0.25) == out["probe"]["relative_drop"]
    assert mean_relative_drop(out) == pytest.approx(0.25)
    # where they differ: accuracy 0.5 -> 0.45 (10% lost), CE 2.0 -> 3.0 (50% more): (0.1 + 0.5) / 2 = 0.3,
    # where the raw mean (0.05 + 1.0) / 2 = 0.525 would be nearly all nats
    before["measures"]["topic"] = scored("accuracy", [1.0] * 10 + [0.0] * 10)
    after["measures"] = {"topic": scored("accuracy", [1.0] * 9 + [0.0] * 11), "probe": scored("cross_entropy", [3.0, 3.0])}
    out = drops(before, after, samples=100, seed=0)
    assert out["topic"]["relative_drop"] == pytest.approx(0.1) and out["probe"]["relative_drop"] == pytest.approx(0.5)
    assert mean_relative_drop(out) == pytest.approx(0.3)


def test_a_relative_drop_from_a_score_of_zero_is_guarded() -> None:
    assert relative_drop(-0.25, 0.0) == 0.0  # accuracy 0 -> 0.25: nothing was there to lose
    assert relative_drop(0.3, 0.0) == pytest.approx(0.3)  # a perfect CE of 0 rising: its raw drop
    assert relative_drop(-0.1, 0.5) == pytest.approx(-0.2)  # a gain is a negative share
    assert mean_relative_drop({}) == 0.0


def test_the_probe_prompts_are_two_fixed_disjoint_halves() -> None:
    every = all_probe_prompts()
    validation, test = probe_prompts("validation"), probe_prompts("test")
    assert len(validation) == len(test) == len(every) // 2 and not set(validation) & set(test)
    assert test == every[:len(test)]  # the first half: what reports always scored
    assert probe_prompts("validation", 3) == validation[:3]
    with pytest.raises(InstructuneError, match="probe_prompts 40: each half"):
        probe_prompts("test", 40)


def test_bootstrap_drop_hand_computed() -> None:
    before, after = [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]
    stats = bootstrap_drop(before, after, higher_is_better=True, samples=500)
    assert stats["drop"] == pytest.approx(0.5)
    assert 0.0 <= stats["low"] <= 0.5 <= stats["high"] <= 1.0
    ce = bootstrap_drop([2.0, 2.0], [3.0, 2.5], higher_is_better=False)  # CE rose by 0.75 on average: forgot
    assert ce["drop"] == pytest.approx(0.75) and ce["low"] > 0
    same = bootstrap_drop([0.3, 0.7], [0.3, 0.7], True)
    assert same["drop"] == same["low"] == same["high"] == 0


def test_transfer_measures_hand_computed() -> None:
    R = [[0.50, 0.20, 0.10],   # before any training
         [0.90, 0.30, 0.15],   # after stage 1 (task 1)
         [0.95, 0.80, 0.25],   # after stage 2 (task 2)
         [0.60, 0.60, 0.70]]   # after stage 3 (task 3)
    m = transfer_measures(R)
    # f_1 = max(R[1][1], R[2][1]) - R[3][1] = 0.95 - 0.60 = 0.35 (the best came after stage 2, not 1)
    # f_2 = R[2][2] - R[3][2] = 0.80 - 0.60 = 0.20
    assert m["forgetting"] == pytest.approx([0.35, 0.20])
    assert m["average_forgetting"] == pytest.approx(0.275)          # (0.35 + 0.20) / 2
    # BWT = ((R[3][1] - R[1][1]) + (R[3][2] - R[2][2])) / 2 = (-0.30 - 0.20) / 2
    assert m["bwt"] == pytest.approx(-0.25)
    # FWT = ((R[1][2] - R[0][2]) + (R[2][3] - R[0][3])) / 2 = (0.10 + 0.15) / 2
    assert m["fwt"] == pytest.approx(0.125)
    assert m["final_average"] == pytest.approx(1.9 / 3)              # (0.60 + 0.60 + 0.70) / 3
    one = transfer_measures([[0.2], [0.9]])  # one task: nothing to forget or transfer
    assert one["forgetting"] == [] and one["bwt"] is one["fwt"] is one["average_forgetting"] is None
    with pytest.raises(ValueError, match="T \\+ 1 rows"):
        transfer_measures([[0.1, 0.2], [0.3, 0.4]])
