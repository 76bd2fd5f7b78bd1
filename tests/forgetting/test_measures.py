"""Forgetting measures on hand-computed inputs: paired drops with bootstrap intervals, transfer matrices."""

from __future__ import annotations

import pytest

from instructune.forgetting.measures import bootstrap_drop, transfer_measures


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
