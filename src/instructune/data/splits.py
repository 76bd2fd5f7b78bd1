"""Train / validation / test splits: deterministic, stratified, leakage-free.

Rows are split before any template is applied, so one source row never shows up in two
splits under two templates. Rows whose main text is the same after normalisation (lowercase,
no punctuation, single spaces) form a group, and a whole group goes to one split: a review
quoted twice cannot be trained on and tested on. Groups are dealt per label (stratified), in
an order shuffled by `seed`, each to the split furthest below its target size.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from instructune.errors import InstructuneError

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
"""Train, validation and test shares of the rows unless a split says otherwise."""


_NOT_WORD = re.compile(r"[^\w\s]|_")  # punctuation (and symbols): "great -- fun!" == "Great fun"


def normalise(text: str) -> str:
    """The duplicate key: lowercase, punctuation removed, whitespace collapsed."""
    return " ".join(_NOT_WORD.sub(" ", str(text).lower()).split())


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions (train, validation, test) summing to 1, with some training data."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise InstructuneError(f"split fractions {list(fractions)} must be three non-negative numbers (train, "
                               "validation, test) that sum to 1 with train > 0, e.g. 0.8 0.1 0.1.")
    return values  # type: ignore[return-value]


def targets(n: int, fractions: Sequence[float]) -> list[int]:
    """Split sizes for `n` items: floors of n * fraction, the remainder to the largest fractional parts."""
    exact = [n * f for f in fractions]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def assign_splits(keys: Sequence[str], labels: Sequence[str | None], fractions: Sequence[float],
                  seed: int = 0) -> list[str]:
    """The split of each row. `keys` are the rows' texts (normalised here), `labels` stratify (None: one stratum)."""
    fractions = check_fractions(fractions)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(normalise(key), []).append(i)
    strata: dict[str, list[list[int]]] = {}
    for members in groups.values():
        counts = Counter(str(labels[i]) for i in members)
        label = min(counts, key=lambda lab: (-counts[lab], lab))  # a group's majority label; ties by name
        strata.setdefault(label, []).append(members)
    out = [""] * len(keys)
    for label in sorted(strata):
        stratum = strata[label]
        random.Random(f"{seed}:{label}").shuffle(stratum)  # str seeds hash the same in every process
        stratum.sort(key=len, reverse=True)  # big groups first, while every split still has room
        want = targets(sum(len(g) for g in stratum), fractions)
        have = [0, 0, 0]
        open_splits = [s for s in range(3) if fractions[s] > 0]  # a split asked to be empty stays empty
        for members in stratum:
            k = max(open_splits, key=lambda s: (want[s] - have[s], -s))
            have[k] += len(members)
            for i in members:
                out[i] = SPLITS[k]
    return out
