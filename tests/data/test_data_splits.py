"""Splits: deterministic, stratified within 2 points, duplicates kept in one split."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructune.data.splits import SPLITS, assign_splits, check_fractions, normalise, targets
from instructune.errors import InstructuneError


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  Great   FUN!!  A must-see.") == "great fun a must see"
    assert normalise("Great fun -- a must see") == normalise("great fun, a MUST see")


def test_targets_sum_to_n() -> None:
    assert targets(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert targets(7, (0.5, 0.25, 0.25)) == [3, 2, 2]  # 3.5, 1.75, 1.75: largest remainders win
    assert all(sum(targets(n, (0.7, 0.2, 0.1))) == n for n in range(50))


def test_stratified_within_two_points() -> None:
    rng = random.Random(0)
    labels = [rng.choice(["a"] * 7 + ["b"] * 2 + ["c"]) for _ in range(3000)]
    keys = [f"text {i}" for i in range(len(labels))]
    splits = assign_splits(keys, labels, (0.6, 0.2, 0.2), seed=3)
    whole = Counter(labels)
    for split in SPLITS:
        part = Counter(lab for lab, s in zip(labels, splits, strict=True) if s == split)
        n = sum(part.values())
        assert n >= 200
        for label in whole:
            assert abs(part[label] / n - whole[label] / len(labels)) <= 0.02, (split, label)
    sizes = Counter(splits)
    assert sizes == {"train": 1800, "validation": 600, "test": 600}


def test_duplicates_land_in_one_split() -> None:
    keys = [f"review number {i}" for i in range(300)]
    keys += ["Review number 7!", "REVIEW  number 7", "review, number 8"] * 5
    labels = ["x"] * len(keys)
    splits = assign_splits(keys, labels, (0.5, 0.25, 0.25), seed=0)
    by_text: dict[str, set] = {}
    for key, split in zip(keys, splits, strict=True):
        by_text.setdefault(normalise(key), set()).add(split)
    assert all(len(s) == 1 for s in by_text.values())
    assert len(by_text) == 300


def test_deterministic_and_seed_dependent() -> None:
    keys = [f"t{i}" for i in range(500)]
    labels = [str(i % 3) for i in range(500)]
    first = assign_splits(keys, labels, (0.8, 0.1, 0.1), seed=1)
    assert first == assign_splits(keys, labels, (0.8, 0.1, 0.1), seed=1)
    assert first != assign_splits(keys, labels, (0.8, 0.1, 0.1), seed=2)


def test_zero_fraction_split_stays_empty() -> None:
    keys = [f"t{i}" for i in range(100)]
    groups = ["same text"] * 30  # one big group that could overflow the others
    splits = assign_splits(groups + keys, [None] * 130, (0.9, 0.1, 0.0), seed=0)
    assert "test" not in splits
    assert Counter(splits) == {"train": 117, "validation": 13}


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions(fractions: tuple) -> None:
    with pytest.raises(InstructuneError, match="must be three non-negative numbers"):
        check_fractions(fractions)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["p", "n", None])), min_size=1, max_size=200),
       st.integers(0, 5))
def test_groups_never_straddle_and_sizes_hold(rows: list, seed: int) -> None:
    keys = [f"text {k}" for k, _ in rows]
    labels = [lab for _, lab in rows]
    splits = assign_splits(keys, labels, (0.6, 0.2, 0.2), seed=seed)
    seen: dict[str, str] = {}
    for key, split in zip(keys, splits, strict=True):
        assert seen.setdefault(key, split) == split
    assert set(splits) <= set(SPLITS)
