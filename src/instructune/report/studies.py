"""Forgetting studies (forgetting.json): scores before and after each cure, drops, gains, costs."""

from __future__ import annotations

from instructune.forgetting.measures import relative_drop
from instructune.report import plots
from instructune.report.blocks import Card, Cards, Cell, Chart, Section, Table, drop_tone, num
from instructune.report.data import ForgettingRun, Runs
from instructune.report.watch import answers_block

DROP_NOTE = ("drop = before \u2212 after for accuracy and ROUGE-L, after \u2212 before for cross-entropy "
             "measures: positive = forgot. [low, high] is the paired bootstrap 95% interval over examples; red: "
             "the whole interval is above 0 (forgetting beyond noise), green: entirely below 0. Mean relative drop: "
             "the mean over measures of drop / |before|, the share of each original score lost (unit-free, so "
             "accuracy and cross-entropy count alike).")


def measures(fg: ForgettingRun) -> list[str]:
    """Retention measures in the order of the first cure (the same for every cure)."""
    cures = fg.data["cures"]
    return list(cures[0]["retention"]) if cures else []


def before_after_section(runs: Runs, colors: plots.Colors) -> Section | None:
    studies = [fg for fg in runs.forgettings if fg.data["cures"]]
    if not studies:
        return None
    s = Section("before-after", "Before and after, per task", "Each task's score on the original model (grey) "
                "and after training with each cure, on the same examples.", nav="Before / after")
    for fg in studies:
        cures = fg.data["cures"]
        first = cures[0]
        panels = [(f"target: {_target_name(fg)}", first["target_metric"], first["target_before"],
                   {c["cure"]: c["target_after"] for c in cures})]
        for key in measures(fg):
            m = first["retention"][key]
            panels.append((key, m["metric"], m["before"], {c["cure"]: c["retention"][key]["after"] for c in cures}))
        png = plots.before_after(panels, colors)
        s.blocks.append(Chart(f"before-after-{fg.label}", png,
                              "The dashed line is the original model. On the target the bars should rise; on every "
                              "other task they should stay at the line (for cross-entropy measures, lower is "
                              "better: a taller bar means the model moved further from its original behaviour).",
                              f"scores before and after each cure ({fg.label})"))
        # a row per cure, a column per measure: ten cures make ten rows, not a table too wide to read
        cols = ["cure", *[f"{p[0]} ({p[1]})" for p in panels]]
        rows = [[Cell("before (original model)"), *[Cell(num(p[2])) for p in panels]]]
        rows += [[Cell(c["cure"]), *[Cell(num(p[3][c["cure"]])) for p in panels]] for c in cures]
        s.blocks.append(Table(cols, [i > 0 for i in range(len(cols))], rows, title=f"{fg.label}: scores"))
    return s


def _target_name(fg: ForgettingRun) -> str:
    train = (fg.data.get("config") or {}).get("train") or {}
    data = train.get("data") or {}
    parts = [str(data.get("source", "")), ",".join(data.get("templates") or [])]
    return "/".join(p for p in parts if p) or "target task"


def forgetting_section(runs: Runs, colors: plots.Colors) -> Section | None:
    studies = [fg for fg in runs.forgettings if fg.data["cures"]]
    if not studies:
        return None
    s = Section("forgetting", "Forgetting: what each cure gained and lost",
                "Rows are cures. Gain on the target task against the drop on every task the model should keep.",
                nav="Forgetting")
    for fg in studies:
        chart = gain_chart(fg, colors)
        s.blocks += [Cards(headline_cards(fg, prefix=f"{fg.label} \u00b7 " if len(studies) > 1 else "")),
                     *([chart] if chart else []), forgetting_table(fg), *answers_block(fg)]
    return s


def forgotten(cure: dict) -> int:
    """Tasks this cure forgot beyond noise: the whole 95% interval of the drop above 0."""
    return sum(1 for m in cure["retention"].values() if isinstance(m.get("low"), (int, float)) and m["low"] > 0)


def headline_cards(fg: ForgettingRun, prefix: str = "") -> list[Card]:
    """The original model's target score, the largest gain, and the cures that forgot least and most."""
    cures, n = fg.data["cures"], len(measures(fg))
    first = cures[0]
    best = max(cures, key=lambda c: c["gain"])
    least = min(cures, key=lambda c: (forgotten(c), -c["gain"]))
    most = max(cures, key=lambda c: (forgotten(c), -c["gain"]))
    cards = [Card(f"{prefix}target {first['target_metric']} \u00b7 before", num(first["target_before"]),
                  "the original model"),
             Card(f"{prefix}largest gain", num(best["gain"], signed=True),
                  f"{best['cure']}: {num(best['target_after'])} after", "tuned")]
    if n:
        cards += [Card(f"{prefix}forgot least", f"{forgotten(least)} of {n}",
                       f"{least['cure']}: tasks forgotten beyond noise", "good" if not forgotten(least) else ""),
                  Card(f"{prefix}forgot most", f"{forgotten(most)} of {n}",
                       f"{most['cure']}: tasks forgotten beyond noise", "bad" if forgotten(most) else "")]
    return cards


def mean_relative(cure: dict) -> float | None:
    """A cure's mean relative drop (for a forgetting.json written before it was stored: from each measure's
    drop and before)."""
    if cure.get("mean_relative_drop") is not None:
        return cure["mean_relative_drop"]
    shares = [relative_drop(m["drop"], m["before"]) for m in cure["retention"].values() if {"drop", "before"} <= set(m)]
    return sum(shares) / len(shares) if shares else None


def forgetting_table(fg: ForgettingRun) -> Table:
    keys = measures(fg)
    metric = fg.data["cures"][0]["target_metric"]
    # the combined column last: the per-measure drops keep their places, the costs theirs
    cols = ["cure", f"target {metric} before", "after", "gain", *[f"{k} drop [95% CI]" for k in keys],
            "trainable %", "wall s", "peak MB", *(["mean relative drop"] if keys else [])]
    rows = []
    for c in fg.data["cures"]:
        gain = c["gain"]
        cells = [Cell(c["cure"]), Cell(num(c["target_before"])), Cell(num(c["target_after"])),
                 Cell(num(gain, signed=True), "good" if gain > 0 else "bad" if gain < 0 else "")]
        for k in keys:
            m = c["retention"].get(k) or {}
            cells.append(Cell(num(m["drop"], signed=True), drop_tone(m["low"], m["high"]),
                              f"[{num(m['low'], signed=True)}, {num(m['high'], signed=True)}]")
                         if "drop" in m else Cell("\u2013"))
        pct = c.get("trainable_pct")
        cells += [Cell("\u2013" if pct is None else f"{pct:.2f}%"), Cell(num(c.get("wall_seconds"), digits=1)),
                  Cell(num(c.get("peak_memory_mb"), digits=0))]
        if keys:
            rel = mean_relative(c)
            cells.append(Cell("\u2013" if rel is None else f"{rel:+.1%}"))
        rows.append(cells)
    return Table(cols, [i > 0 for i in range(len(cols))], rows, title=f"{fg.label}/forgetting.json", note=DROP_NOTE)


def gain_chart(fg: ForgettingRun, colors: plots.Colors) -> Chart | None:
    cures = fg.data["cures"]
    panels: list[tuple[str, str, list[tuple[str, float, float, float]]]] = []
    for key in measures(fg):
        points = [(c["cure"], m["drop"], m["low"], m["high"]) for c in cures
                  if {"drop", "low", "high"} <= set(m := c["retention"].get(key) or {})]
        if points:
            panels.append((key, cures[0]["retention"][key]["metric"], points))
    if not panels:
        return None
    gains = {c["cure"]: c["gain"] for c in cures}
    png = plots.gain_vs_forgetting(panels, gains, cures[0]["target_metric"], colors)
    return Chart(f"gain-vs-forgetting-{fg.label}", png,
                 "Up is better (more gained on the target), left is better (less forgotten). Bars are 95% "
                 "intervals of the drop: a bar crossing the vertical line at 0 is within noise. The best cure "
                 "sits top-left in every panel.", f"target gain against forgetting per cure ({fg.label})")

