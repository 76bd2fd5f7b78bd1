"""A learning curve from a grid sweep: a test score against one numeric parameter (the training-set size),
each point with a percentile-bootstrap 95% interval over the test examples (drawn by
`report.plots.learning_curve`, for the sweep folder and the report alike)."""

from __future__ import annotations

import numpy as np

from instructune.types import JSON


def bootstrap_interval(mean: float, n: int, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a mean of n per-example 0/1 scores (accuracy): resampling n examples with k = mean * n
    correct is drawing Binomial(n, k / n)."""
    if n <= 0:
        return mean, mean
    draws = np.random.default_rng(seed).binomial(n, min(max(mean, 0.0), 1.0), size=samples) / n
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def points(trials: list[JSON], param: str, metric: str, n: int) -> list[JSON]:
    """(x, test score, interval) per completed trial, by x."""
    out = []
    for t in trials:
        score = (t.get("test") or {}).get(metric)
        if t["state"] == "complete" and param in t["params"] and isinstance(score, (int, float)):
            low, high = bootstrap_interval(score, n)
            out.append({"x": t["params"][param], "value": score, "low": low, "high": high, "n": n})
    return sorted(out, key=lambda p: p["x"])
