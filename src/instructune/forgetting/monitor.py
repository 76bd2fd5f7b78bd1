"""Forgetting watched while a run trains: the drop of every retention measure from the untrained model,
and the budget a trade-off selection holds validations to.

    drop          = before - after        (accuracy: positive = forgot)
    drop          = after - before        (cross-entropy measures: positive = forgot)
    relative drop = drop / |before|       (the share of the original score lost; what the budget bounds)

worked out by `measures.drop` and `measures.relative_drop`, as a forgetting study works them out.

The suite is built on the retention tasks' validation rows and the probe's validation prompts:
it chooses (best/, an early stop), so it never reads the test rows a forgetting study reports on.
Measurements are cheap by design: small fixed subsets, classification by likelihood, generation tasks
by their reference's cross-entropy, the general probe by the cross-entropy of the original model's
own answers (generated once, before training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instructune.forgetting.measures import drop, relative_drop
from instructune.forgetting.suite import RetentionSuite
from instructune.metrics import higher_is_better
from instructune.types import Model, Tokenizer

PREFIX = "drop/"
"""Scores keys that carry retention drops in the measure's own units (`drop/bbc-news/topic`)."""
RELATIVE = "drop_relative/"
"""Scores keys that carry the same drops relative to the untrained model's score (`drop_relative/...`)."""


def is_drop(key: str) -> bool:
    """A retention key (raw or relative drop), logged under its own name rather than as a `val_` score."""
    return key.startswith((PREFIX, RELATIVE))


@dataclass
class Monitor:
    """A retention suite (built on validation rows) and the untrained model's scores on it."""

    suite: RetentionSuite
    before: dict[str, Any]
    tok: Tokenizer

    @classmethod
    def start(cls, suite: RetentionSuite, model: Model, tok: Tokenizer) -> Monitor:
        """Score the model before its first step (for PEFT methods the adapter is still the identity)."""
        return cls(suite, suite.score(model, tok, cheap=True), tok)

    def drops(self, model: Model) -> dict[str, float]:
        """`drop/<measure>` and `drop_relative/<measure>` of each measure since the start (positive = forgot)."""
        after = self.suite.score(model, self.tok, original=self.before, cheap=True)
        out = {}
        for key, b in self.before["measures"].items():
            lost = drop(b["mean"], after["measures"][key]["mean"], higher_is_better(b["metric"]))
            out[f"{PREFIX}{key}"] = lost
            out[f"{RELATIVE}{key}"] = relative_drop(lost, b["mean"])
        return out


def over_budget(scores: dict[str, Any], budget: Any) -> list[str]:
    """The measures whose relative drop in `scores` exceeds `budget` (one number for all, or
    {measure: number}; shares of the untrained model's score, 0.05 = lost 5% of it)."""
    drops = {k[len(RELATIVE):]: v for k, v in scores.items() if k.startswith(RELATIVE)}
    limits = budget if isinstance(budget, dict) else dict.fromkeys(drops, budget)
    return [k for k, limit in limits.items() if limit is not None and drops.get(k, 0.0) > float(limit)]
