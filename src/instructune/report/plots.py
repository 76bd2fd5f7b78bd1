"""The report's charts: plain data in, PNG bytes out (matplotlib's Agg canvas, no pyplot state).

Every chart draws numbers exactly as the run files hold them; colours follow one name -> colour
map for the whole report, so a cure or run keeps its colour from chart to chart.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from matplotlib import rc_context
from matplotlib.figure import Figure

from instructune.evaluation.metrics import higher_is_better

PALETTE = ["#4f46e5", "#0d9488", "#e11d48", "#d97706", "#0284c7", "#7c3aed", "#65a30d", "#db2777",
           "#0891b2", "#9333ea", "#ca8a04", "#475569"]
BASE = "#94a3b8"    # the model before tuning: zero-shot scores, "before" bars
FEWSHOT = "#64748b"  # in-context prompting of the base model
INK, MUTED, GRID = "#0f172a", "#64748b", "#e2e8f0"

STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.titlelocation": "left",
    "axes.labelcolor": MUTED, "axes.edgecolor": GRID, "axes.linewidth": 1.0, "axes.grid": True,
    "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True, "axes.spines.top": False,
    "axes.spines.right": False, "xtick.color": MUTED, "ytick.color": MUTED, "text.color": INK,
    "axes.titlecolor": INK, "legend.frameon": False, "legend.fontsize": 9, "figure.facecolor": "white",
}


class Colors:
    """A stable colour per name, handed out in order of first request."""

    def __init__(self) -> None:
        self._given: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._given:
            self._given[name] = PALETTE[len(self._given) % len(PALETTE)]
        return self._given[name]


@contextmanager
def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw: Any) -> Iterator[tuple[Any, Any]]:

    with rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
        yield fig, axes.ravel()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def direction(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def metric_bars(settings: Sequence[tuple[str, str]], metrics: dict[str, Sequence[float | None]]) -> bytes:
    """One panel per metric, one horizontal bar per (setting label, kind "base"/"few-shot"/"tuned")."""
    n, colors = len(settings), {"base": BASE, "few-shot": FEWSHOT}
    with _figure(11, 0.9 + 0.42 * n, ncols=len(metrics), sharey=True) as (fig, axes):
        for ax, (metric, values) in zip(axes, metrics.items()):
            ys = list(range(n))[::-1]
            vals = [v if v is not None else 0.0 for v in values]
            ax.barh(ys, vals, height=0.62, color=[colors.get(k, PALETTE[0]) for _, k in settings])
            top = max([v for v in vals if math.isfinite(v)] + [1e-9])
            for y, v in zip(ys, values):
                ax.text((v or 0) + top * 0.015, y, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=9,
                        color=INK)
            ax.set_xlim(0, 1.0 if top <= 1 and higher_is_better(metric) else top * 1.18)
            ax.set_title(f"{metric}  ({direction(metric)})")
            ax.set_yticks(ys, [_short(s, 40) for s, _ in settings])
            ax.grid(axis="y", visible=False)
        return _png(fig)


def loss_curves(runs: Sequence[tuple[str, Sequence[tuple[int, float]], Sequence[tuple[int, float]]]],
                colors: Colors) -> bytes:
    """Train loss (left) and validation loss (right) against optimiser step, a line per run."""
    with _figure(11, 3.6, ncols=2) as (fig, axes):
        for name, train, val in runs:
            c = colors(name)
            if train:
                axes[0].plot(*zip(*train), color=c, lw=1.8, label=name)
            if val:
                axes[1].plot(*zip(*val), color=c, lw=1.8, marker="o", ms=4, label=name)
        for ax, title in zip(axes, ("train loss", "validation loss")):
            ax.set_title(f"{title}  (lower is better)")
            ax.set_xlabel("optimiser step")
        axes[0].set_ylabel("cross-entropy per completion token")
        legend = {}  # a run with only validation points still gets its entry
        for ax in axes:
            legend.update(zip(*ax.get_legend_handles_labels()[::-1]))
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5))
        return _png(fig)


def before_after(measures: Sequence[tuple[str, str, float, dict[str, float]]], colors: Colors) -> bytes:
    """One panel per measure (title, metric, before, {cure: after}): the original model's score, then each cure's."""
    ncols = len(measures) if len(measures) <= 4 else 3
    nrows = math.ceil(len(measures) / ncols)
    with _figure(11, 3.3 * nrows, ncols=ncols, nrows=nrows) as (fig, axes):
        for ax, (title, metric, before, after) in zip(axes, measures):
            names = ["before", *after]
            vals = [before, *after.values()]
            ax.bar(range(len(vals)), vals, width=0.66, color=[BASE, *(colors(c) for c in after)])
            ax.axhline(before, color=BASE, lw=1, ls="--", zorder=0)
            for x, v in enumerate(vals):
                ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8, color=INK)
            ax.set_xticks(range(len(vals)), names, rotation=30 if len(names) > 4 else 0, ha="right"
                          if len(names) > 4 else "center")
            ax.set_title(_wrap(title, 8 * 12 // ncols))
            ax.set_ylabel(f"{metric} ({direction(metric)})")
            ax.set_ylim(0, max(vals) * 1.15 if max(vals) > 0 else 1)
            ax.grid(axis="x", visible=False)
        for ax in axes[len(measures):]:
            ax.set_visible(False)
        return _png(fig)


def gain_vs_forgetting(panels: Sequence[tuple[str, str, Sequence[tuple[str, float, float, float]]]],
                       gains: dict[str, float], target_metric: str, colors: Colors) -> bytes:
    """One panel per retention measure: x = its drop with the 95% interval, y = target gain, a point per cure."""
    ncols = len(panels) if len(panels) <= 4 else 3
    nrows = math.ceil(len(panels) / ncols)
    with _figure(11, 3.5 * nrows, ncols=ncols, nrows=nrows, sharey=True) as (fig, axes):
        for ax, (title, metric, points) in zip(axes, panels):
            ax.axvline(0, color=MUTED, lw=1, zorder=0)
            for cure, drop, low, high in points:
                if not all(map(math.isfinite, (drop, low, high, gains[cure]))):
                    continue
                c = colors(cure)
                err = [[max(drop - low, 0.0)], [max(high - drop, 0.0)]]  # a percentile interval may miss the mean
                ax.errorbar([drop], [gains[cure]], xerr=err, fmt="o", ms=7, color=c,
                            ecolor=c, elinewidth=1.6, capsize=4)
                ax.annotate(cure, (drop, gains[cure]), xytext=(6, 6), textcoords="offset points", fontsize=9,
                            color=c, fontweight="bold")
            ax.set_title(_wrap(title, 8 * 12 // ncols))
            ax.set_xlabel(f"{metric} drop (forgot \u2192)")
            ax.margins(x=0.25, y=0.2)
        axes[0].set_ylabel(f"target {target_metric} gain")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        return _png(fig)


def cost_bars(rows: Sequence[tuple[str, str, float | None, float | None]], colors: Colors) -> bytes:
    """Trainable parameters (log scale) and peak memory, a bar per (label, colour key, params, peak MB)."""
    with _figure(11, 0.9 + 0.4 * len(rows), ncols=2, sharey=True) as (fig, axes):
        ys = list(range(len(rows)))[::-1]
        for ax, col, title in ((axes[0], 2, "trainable parameters (log scale)"), (axes[1], 3, "peak memory, MB")):
            vals = [r[col] for r in rows]
            ax.barh(ys, [v or 0 for v in vals], height=0.62, color=[colors(r[1]) for r in rows])
            for y, v in zip(ys, vals):
                ax.text(v or 0, y, "  n/a" if v is None else f"  {v:,.0f}", va="center", fontsize=9)
            ax.set_title(title)
            ax.grid(axis="y", visible=False)
            finite = [v for v in vals if v]
            if col == 2 and finite:
                ax.set_xscale("log")
                ax.set_xlim(min(finite) / 3, max(finite) * 40)
            elif finite:
                ax.set_xlim(0, max(finite) * 1.3)
        axes[0].set_yticks(ys, [_short(r[0], 30) for r in rows])
        return _png(fig)


def _wrap(text: str, width: int) -> str:
    """Panel titles on up to two lines so neighbouring panels' titles never overlap."""
    lines = textwrap.wrap(text, width, break_on_hyphens=False) or [""]
    return "\n".join(lines[:1] + [_short(" ".join(lines[1:]), width)] if len(lines) > 1 else lines)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "\u2026" + text[-(n - 1):]
