"""What a kind of retention measure gives back."""

from __future__ import annotations

from typing import NamedTuple

from instructune.types import JSONValue


class Scored(NamedTuple):
    metric: str
    """The metric's name in the metrics registry (its direction says which way is forgetting)."""
    scores: list[float]
    """One score per input, in input order (paired before and after)."""
    state: JSONValue = None
    """What scoring another model against this one needs (the general probe: the original's answers)."""
