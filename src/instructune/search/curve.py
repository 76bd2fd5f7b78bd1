"""A learning curve from a grid sweep: a test score against one numeric parameter (the training-set size),
each point with a percentile-bootstrap 95% interval over the test examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def bootstrap_interval(mean: float, n: int, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a mean of n per-example 0/1 scores (accuracy): resampling n examples with k = mean * n
    correct is drawing Binomial(n, k / n)."""
    if n <= 0:
        return mean, mean
    draws = np.random.default_rng(seed).binomial(n, min(max(mean, 0.0), 1.0), size=samples) / n
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def points(trials: list[dict[str, Any]], param: str, metric: str, n: int) -> list[dict[str, Any]]:
    """(x, test score, interval) per completed trial, by x."""
    out = []
    for t in trials:
        score = (t.get("test") or {}).get(metric)
        if t["state"] == "complete" and param in t["params"] and isinstance(score, (int, float)):
            low, high = bootstrap_interval(score, n)
            out.append({"x": t["params"][param], "value": score, "low": low, "high": high, "n": n})
    return sorted(out, key=lambda p: p["x"])


def plot(curve: list[dict[str, Any]], param: str, metric: str, path: Path) -> Path:
    """The curve on a log x axis, the interval as a band."""
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot()
    xs = [p["x"] for p in curve]
    ax.fill_between(xs, [p["low"] for p in curve], [p["high"] for p in curve], alpha=0.25, label="95% interval")
    ax.plot(xs, [p["value"] for p in curve], marker="o", label=f"test {metric}")
    ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path
