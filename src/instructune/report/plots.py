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
from typing import TYPE_CHECKING

from matplotlib import rc_context
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from instructune.metrics import higher_is_better
from instructune.types import JSON

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes

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
def figure(width: float, height: float, ncols: int = 1, nrows: int = 1,
           **kw: object) -> Iterator[tuple[Figure, np.ndarray]]:
    """A constrained-layout figure in the report's style, with its axes flattened."""
    with rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
        yield fig, axes.ravel()


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, with no timestamp or software tag (stable across runs)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def direction(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def metric_bars(settings: Sequence[tuple[str, str]], metrics: dict[str, Sequence[float | None]]) -> bytes:
    """One panel per metric, one horizontal bar per (setting label, kind "base"/"few-shot"/"tuned")."""
    n, colors = len(settings), {"base": BASE, "few-shot": FEWSHOT}
    with figure(11, 0.9 + 0.42 * n, ncols=len(metrics), sharey=True) as (fig, axes):
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
        return png_bytes(fig)


def loss_curves(runs: Sequence[tuple[str, Sequence[tuple[int, float]], Sequence[tuple[int, float]]]],
                colors: Colors) -> bytes:
    """Train loss (left) and validation loss (right) against optimiser step, a line per run."""
    with figure(11, 3.6, ncols=2) as (fig, axes):
        for name, train, val in runs:
            c = colors(name)
            if train:  # a short run logs a point or two: markers keep them visible where a line has no length
                axes[0].plot(*zip(*train), color=c, lw=1.8, label=name, marker="o" if len(train) < 4 else None,
                             ms=4)
            if val:
                axes[1].plot(*zip(*val), color=c, lw=1.8, marker="o", ms=4, label=name)
        for ax, title in zip(axes, ("train loss", "validation loss")):
            ax.set_title(f"{title}  (lower is better)")
            ax.set_xlabel("optimiser step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 0.96 .. 1.04 ticks
        axes[0].set_ylabel("cross-entropy per completion token")
        legend = {}  # a run with only validation points still gets its entry
        for ax in axes:
            legend.update(zip(*ax.get_legend_handles_labels()[::-1]))
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5))
        return png_bytes(fig)


def before_after(measures: Sequence[tuple[str, str, float, dict[str, float]]], colors: Colors) -> bytes:
    """One panel per measure (title, metric, before, {cure: after}): the original model's score, then each cure's.

    With many cures the bars are too narrow for names under them: a legend below names the colours instead,
    and each bar's value stands upright on it."""
    ncols = len(measures) if len(measures) <= 4 else 3
    nrows = math.ceil(len(measures) / ncols)
    cures = list(measures[0][3]) if measures else []
    crowded = (len(cures) + 1) * ncols > 24
    with figure(11, 3.3 * nrows + 0.4 * crowded, ncols=ncols, nrows=nrows) as (fig, axes):
        for ax, (title, metric, before, after) in zip(axes, measures):
            names, vals = ["before", *after], [before, *after.values()]
            ax.bar(range(len(vals)), vals, width=0.66, color=[BASE, *(colors(c) for c in after)])
            ax.axhline(before, color=BASE, lw=1, ls="--", zorder=0)
            for x, v in enumerate(vals):
                ax.text(x, v, f" {v:.3f}" if crowded else f"{v:.3f}", ha="center", va="bottom",
                        fontsize=7 if crowded else 8, color=INK, rotation=90 if crowded else 0)
            if crowded:
                ax.set_xticks([])
            else:
                ax.set_xticks(range(len(vals)), names, rotation=30 if len(names) > 4 else 0,
                              ha="right" if len(names) > 4 else "center")
            ax.set_title(_wrap(title, 8 * 12 // ncols))
            ax.set_ylabel(f"{metric} ({direction(metric)})")
            ax.set_ylim(0, max(vals) * (1.3 if crowded else 1.15) if max(vals) > 0 else 1)
            ax.grid(axis="x", visible=False)
        for ax in axes[len(measures):]:
            ax.set_visible(False)
        if crowded:
            handles = [Patch(color=BASE, label="before"), *(Patch(color=colors(c), label=c) for c in cures)]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
        return png_bytes(fig)


def gain_vs_forgetting(panels: Sequence[tuple[str, str, Sequence[tuple[str, float, float, float]]]],
                       gains: dict[str, float], target_metric: str, colors: Colors) -> bytes:
    """One panel per retention measure: x = its drop with the 95% interval, y = target gain, a point per cure."""
    ncols = len(panels) if len(panels) <= 4 else 3
    nrows = math.ceil(len(panels) / ncols)
    with figure(11, 3.5 * nrows, ncols=ncols, nrows=nrows, sharey=True) as (fig, axes):
        labels = []
        for ax, (title, metric, points) in zip(axes, panels):
            ax.axvline(0, color=MUTED, lw=1, zorder=0)
            for cure, drop, low, high in points:
                if not all(map(math.isfinite, (drop, low, high, gains[cure]))):
                    continue
                c = colors(cure)
                err = [[max(drop - low, 0.0)], [max(high - drop, 0.0)]]  # a percentile interval may miss the mean
                ax.errorbar([drop], [gains[cure]], xerr=err, fmt="o", ms=7, color=c,
                            ecolor=c, elinewidth=1.6, capsize=4)
                labels.append(ax.annotate(cure, (drop, gains[cure]), xytext=(0, 0), textcoords="offset points",
                                          fontsize=9, color=c, fontweight="bold", ha="left", va="bottom",
                                          arrowprops={"arrowstyle": "-", "color": c, "lw": 0.6, "alpha": 0.7,
                                                      "shrinkA": 0, "shrinkB": 4}))
            ax.set_title(_wrap(title, 8 * 12 // ncols))
            ax.set_xlabel(f"{metric} drop (forgot \u2192)")
            ax.margins(x=0.3, y=0.25)
        axes[0].set_ylabel(f"target {target_metric} gain")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        _spread(fig, labels)
        return png_bytes(fig)


def _spread(fig: Figure, labels: list[Text]) -> None:
    """Move each point's label where no other label is (`place_labels`), joined to its point by a thin line.

    Placement needs the final axes: the layout is computed once first, then the labels are taken
    out of it, so saving does not move the axes they were placed in.
    """
    for t in labels:
        t.set_in_layout(False)
    fig.draw_without_rendering()
    by_axes: dict[Axes, list[Text]] = {}
    for t in labels:
        by_axes.setdefault(t.axes, []).append(t)
    to_points = 72 / fig.dpi
    for ax, texts in by_axes.items():
        anchors = [tuple(ax.transData.transform(t.xy)) for t in texts]
        extents = [Text.get_window_extent(t) for t in texts]  # the text alone: an annotation's own box has its line
        sizes = [(e.width, e.height) for e in extents]
        box = ax.get_window_extent()
        placed = place_labels(anchors, sizes, (box.x0, box.y0, box.x1, box.y1))
        for t, (x, y), (x0, y0, _, _) in zip(texts, anchors, placed):
            t.xyann = ((x0 - x) * to_points, (y0 - y) * to_points)


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 bounds: tuple[float, float, float, float] | None = None, offset: float = 6.0,
                 gap: float = 2.0, marker: float = 5.0) -> list[tuple[float, float, float, float]]:
    """Label boxes (x0, y0, x1, y1) beside their points (x, y), no two overlapping; deterministic.

    Display units, y up. Each label wants the spot just right of and above its point (left of it
    when the right would leave `bounds`, (x0, y0, x1, y1)). Taken top to bottom, a label that would
    overlap one already placed, or a point (a square of half-side `marker`), moves down just past
    it: the labels of a pile of points stack in a column in the points' order, and their leader
    lines do not cross. If that column runs out of `bounds`, the labels stack upwards from the
    bottom instead; if both do, the better column is moved inside as a whole.
    """
    def column(order: list[int], down: bool) -> list[tuple[float, float, float, float]]:
        placed: dict[int, tuple[float, float, float, float]] = {}
        dots = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
        for i in order:
            (x, y), (w, h) = anchors[i], sizes[i]
            x0 = x + offset if bounds is None or x + offset + w <= bounds[2] else x - offset - w
            y0 = y + offset / 2
            while hit := [p for p in [*placed.values(), *dots] if _overlap((x0, y0, x0 + w, y0 + h), p) > 0]:
                y0 = min(p[1] for p in hit) - gap - h if down else max(p[3] for p in hit) + gap
            placed[i] = (x0, y0, x0 + w, y0 + h)
        return [placed[i] for i in range(len(anchors))]

    if not anchors:
        return []
    top_first = sorted(range(len(anchors)), key=lambda i: (-anchors[i][1], i))
    options = [column(top_first, down=True), column(top_first[::-1], down=False)]
    if bounds is None:
        return options[0]
    below = [max(bounds[1] - min(b[1] for b in o), 0.0) for o in options]
    above = [max(max(b[3] for b in o) - bounds[3], 0.0) for o in options]
    best = min(range(2), key=lambda k: below[k] + above[k])
    shift = below[best] or -above[best]  # a column taller than the axes keeps its bottom inside
    return [(x0, y0 + shift, x1, y1 + shift) for x0, y0, x1, y1 in options[best]]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area shared by two boxes (x0, y0, x1, y1)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def score_matrix(matrix: Sequence[Sequence[float]], rows: Sequence[str], tasks: Sequence[str]) -> bytes:
    """A sequential study's scores as a heatmap: row j = after stage j (row 0 = before any training),
    column i = task i, each cell written out; a frame marks task i just after its own stage."""
    values = [v for row in matrix for v in row if math.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    cmap = LinearSegmentedColormap.from_list("score", ["#f8fafc", "#c7d2fe", "#4f46e5", "#312e81"])
    n_rows, n_cols = len(matrix), len(tasks)
    with figure(11, 1.3 + 0.5 * n_rows) as (fig, axes):
        ax = axes[0]
        ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high if high > low else low + 1, aspect="auto")
        for j, row in enumerate(matrix):
            for i, v in enumerate(row):
                shade = (v - low) / (high - low) if high > low else 0.0
                ax.text(i, j, f"{v:.3f}", ha="center", va="center", fontsize=10, fontweight="bold",
                        color="white" if shade > 0.55 else INK)
        for i in range(min(n_cols, n_rows - 1)):
            ax.add_patch(Rectangle((i - 0.5, i + 0.5), 1, 1, fill=False, edgecolor=INK, lw=1.6))
        ax.set_xticks(range(n_cols), [_wrap(t, 110 // max(n_cols, 1)) for t in tasks])
        ax.set_yticks(range(n_rows), [_short(r, 34) for r in rows])
        ax.tick_params(length=0)
        ax.xaxis.tick_top()
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        return png_bytes(fig)


def cost_bars(rows: Sequence[tuple[str, str, float | None, float | None]], colors: Colors) -> bytes:
    """Trainable parameters (log scale) and peak memory, a bar per (label, colour key, params, peak MB)."""
    with figure(11, 0.9 + 0.4 * len(rows), ncols=2, sharey=True) as (fig, axes):
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
        return png_bytes(fig)


def _wrap(text: str, width: int) -> str:
    """Panel titles on up to two lines so neighbouring panels' titles never overlap; a task name
    (`rotten-tomatoes-news/title`) breaks after its "/" rather than mid-word."""
    lines = [line.replace("/ ", "/") for line in textwrap.wrap(text.replace("/", "/ "), width,
                                                               break_on_hyphens=False)] or [""]
    return "\n".join(lines[:1] + [_short(" ".join(lines[1:]), width)] if len(lines) > 1 else lines)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "\u2026" + text[-(n - 1):]


def sweep_history(history: Sequence[tuple[int, float, str]],
                  slices: dict[str, Sequence[tuple[object, float, str, int]]], metric: str, maximize: bool,
                  chosen: int) -> bytes:
    """A sweep's objective per trial (left, with the best so far) and against each parameter (right)."""
    ncols = 1 + len(slices)
    with figure(min(3.6 * ncols, 12), 3.3, ncols=ncols, sharey=True) as (fig, axes):
        ax = axes[0]
        best, line = None, []
        for number, value, state in sorted(history):
            if state == "complete":
                best = value if best is None else (max if maximize else min)(best, value)
            line.append((number, best))
        ax.step([n for n, b in line if b is not None], [b for _, b in line if b is not None], where="post",
                color=PALETTE[0], lw=1.6, label="best so far")
        for number, value, state in history:
            _trial_point(ax, number, value, state, number == chosen)
        ax.set_title("trials in order")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"validation {metric} ({direction(metric)})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best")
        for ax, (param, points) in zip(axes[1:], slices.items()):
            values = [v for v, _, _, _ in points]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric and _log_axis(values):
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_minor_formatter(NullFormatter())
            elif numeric:
                ax.xaxis.set_major_locator(MaxNLocator(4))
            if numeric:
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
            for v, score, state, number in points:
                _trial_point(ax, v if numeric else str(v), score, state, number == chosen)
            ax.set_title(_short(param, 24))
            ax.set_xlabel(param.rsplit(".", 1)[-1])
        return png_bytes(fig)


def _trial_point(ax: Axes, x: object, y: float, state: str, chosen: bool) -> None:
    pruned = state != "complete"
    ax.scatter([x], [y], s=70 if chosen else 34, zorder=3, marker="o",
               facecolors="white" if pruned else (PALETTE[2] if chosen else PALETTE[0]),
               edgecolors=MUTED if pruned else (PALETTE[2] if chosen else PALETTE[0]), linewidths=1.4)


def _log_axis(values: Sequence[float]) -> bool:
    """Positive values spread over more than a factor of 4, not all whole numbers: a log range."""
    return (all(v > 0 for v in values) and len(set(values)) > 1 and max(values) / min(values) > 4
            and not all(float(v).is_integer() for v in values))


def pareto_front(points: Sequence[tuple[int, float, float]], front: set[int], chosen: int, metric: str,
                 budget: float | None) -> bytes:
    """Each trial's target score (y) against its mean retention drop (x); the front joined, the choice ringed."""
    with figure(6.5, 4.2) as (fig, axes):
        ax = axes[0]
        on = sorted((drop, score) for n, score, drop in points if n in front)
        ax.plot([d for d, _ in on], [s for _, s in on], color=PALETTE[0], lw=1.4, zorder=2, label="Pareto front")
        for n, score, drop in points:
            c = PALETTE[0] if n in front else BASE
            ax.scatter([drop], [score], s=44, color=c, zorder=3)
            ax.annotate(str(n), (drop, score), xytext=(4, 4), textcoords="offset points", fontsize=8, color=c)
            if n == chosen:
                ax.scatter([drop], [score], s=180, facecolors="none", edgecolors=PALETTE[2], linewidths=1.8,
                           zorder=4, label="chosen")
        if budget is not None:
            ax.axvline(budget, color=MUTED, ls="--", lw=1, label="forgetting budget")
        ax.set_xlabel("mean retention drop (forgot \u2192)")
        ax.set_ylabel(f"validation {metric}")
        ax.legend(loc="best")
        return png_bytes(fig)


def learning_curve(points: Sequence[JSON], param: str, metric: str) -> bytes:
    """A grid sweep's test score against one parameter (log x), the bootstrap 95% interval as a band."""
    with figure(7.5, 3.6) as (fig, axes):
        ax = axes[0]
        xs = [p["x"] for p in points]
        ax.fill_between(xs, [p["low"] for p in points], [p["high"] for p in points], color=PALETTE[0], alpha=0.18,
                        lw=0, label="95% interval")
        ax.plot(xs, [p["value"] for p in points], marker="o", color=PALETTE[0], lw=1.8, label=f"test {metric}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param)
        ax.set_ylabel(f"test {metric} ({direction(metric)})")
        ax.legend(loc="lower right")
        return png_bytes(fig)
