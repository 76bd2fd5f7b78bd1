"""Hyperparameter searches (sweep.json): the trials, how the objective moved with each parameter, the
Pareto front of target score against forgetting, the parameters' importance, and the one test score.

    instructune sweep configs/sweep-lora-rotten-tomatoes.yaml   ->   runs/sweep-.../sweep.json
"""

from __future__ import annotations

from instructune.report import plots
from instructune.report.blocks import Block, Card, Cards, Cell, Chart, Section, Table, num
from instructune.report.data import Runs, SweepRun
from instructune.types import JSON


def sweep_section(runs: Runs) -> Section | None:
    blocks = [b for sw in runs.sweeps for b in sweep_blocks(sw)]
    return Section("sweep", "Hyperparameter search",
                   "Every trial trained on the train split and was scored on the validation split only; the test "
                   "split was scored once, on the chosen configuration, after the search ended.", blocks,
                   nav="Sweep") if blocks else None


def sweep_blocks(sw: SweepRun) -> list[Block]:
    d = sw.data
    trials, chosen, objective = d["trials"], d["chosen"], d["objective"]
    metric = objective.removeprefix("val_")
    params = list(chosen["params"])
    states = [t["state"] for t in trials]
    test = d.get("test") or {}
    cards = [Card("chosen trial", f"#{chosen['number']}", _params(chosen["params"]), "tuned"),
             Card(f"validation {metric}", num(chosen["values"][0] if chosen.get("values") else None),
                  "of the chosen trial"),
             Card(f"test {metric}", num(test.get(metric)), "scored once, after the search" if test else
                  "not scored (sweep.final: false)", "good" if test else ""),
             *_forgetting_card(d),
             Card("trials", str(len(trials)), f"{states.count('complete')} complete, {states.count('pruned')} pruned"
                  + (f", {states.count('fail')} failed" if "fail" in states else ""))]
    done = [t for t in trials if t.get("values")]
    history = [(t["number"], t["values"][0], t["state"]) for t in done]
    slices = {p: [(t["params"][p], t["values"][0], t["state"], t["number"]) for t in done if p in t["params"]]
              for p in params}
    blocks: list[Block] = [Cards(cards)]
    if history:
        png = plots.sweep_history(history, slices, metric, d["direction"] == "maximize", chosen["number"])
        blocks.append(Chart(f"sweep-{_slug(sw.label)}", png,
                            f"Left: {objective} of every trial in the order they ran, pruned ones at the step "
                            "where they were stopped, the line the best so far. Right: the same scores against "
                            "each parameter (log scale for a log range).",
                            f"validation {metric} of every trial ({sw.label})"))
    if d.get("forgetting") and d.get("pareto") is not None:
        points = [(t["number"], t["values"][0], t["values"][1]) for t in done if len(t["values"]) > 1]
        blocks.append(Chart(f"sweep-pareto-{_slug(sw.label)}",
                            plots.pareto_front(points, set(d["pareto"]), chosen["number"], metric,
                                               d.get("forgetting_budget")),
                            f"Each trial's target score against its {d.get('second_objective') or 'mean drop'} "
                            "over the retention measures (validation rows); the Pareto front (no trial "
                            "is better on both) is joined up, the chosen trial ringed"
                            + (", the dashed line the forgetting budget." if d.get("forgetting_budget") is not None
                               else "."), f"target against forgetting of every trial ({sw.label})"))
    if d.get("learning_curve"):
        blocks += curve_blocks(sw, metric)
    blocks.append(trials_table(sw))
    if d.get("importance"):
        blocks.append(Table(["parameter", "importance"], [False, True],
                            [[Cell(k), Cell(num(v, 2))] for k, v in d["importance"].items()],
                            title="parameter importance (Optuna's fANOVA over the complete trials)"))
    return blocks


def _forgetting_card(d: JSON) -> list[Card]:
    """The chosen configuration's forgetting on the suite's test rows, when the final scoring measured it."""
    f = d.get("test_forgetting")
    if not f:
        return []
    return [Card("test mean relative drop", _pct(f["mean_relative_drop"]),
                 "share of the original scores lost, on the suite's test rows", "")]


def curve_blocks(sw: SweepRun, metric: str) -> list[Block]:
    """A grid sweep that scored every trial on the test split: its learning curve, and the points."""
    points = sw.data["learning_curve"]
    param = next(iter(sw.data["chosen"]["params"]), "x")
    chart = Chart(f"sweep-curve-{_slug(sw.label)}", plots.learning_curve(points, param, metric),
                  f"Test {metric} against {param}, every point scored on the same test examples; the band is a "
                  "bootstrap 95% interval over them. Nothing was selected on the test split.",
                  f"learning curve: test {metric} against {param} ({sw.label})")
    table = Table([param, f"test {metric}", "95% interval", "test examples"], [True, True, True, True],
                  [[Cell(num(p["x"])), Cell(num(p["value"])), Cell(f"{num(p['low'])} to {num(p['high'])}"),
                    Cell(num(p["n"]))] for p in points], title=f"{sw.label}: learning curve")
    return [chart, table]


def trials_table(sw: SweepRun) -> Table:
    d = sw.data
    metric = d["objective"].removeprefix("val_")
    params = list(d["chosen"]["params"])
    # sweep.json files written before the relative unit carry no second_objective: their mean drop was raw
    second = d.get("second_objective") or "mean drop"
    head = ["trial", "state", *params, f"val {metric}", *([second] if d.get("forgetting") else []), "wall s",
            "peak MB"]
    rows = []
    for t in d["trials"]:
        values = t.get("values") or []
        state = t["state"] + (f" at {t['pruned_at']}" if t.get("pruned_at") is not None else "")
        row = [Cell(str(t["number"]), "good" if t["number"] == d["chosen"]["number"] else ""), Cell(state),
               *[Cell(_value(t["params"].get(p))) for p in params], Cell(num(values[0] if values else None, 4))]
        if d.get("forgetting"):
            row.append(Cell((_pct(values[1]) if d.get("second_objective") else num(values[1], 4, signed=True))
                            if len(values) > 1 else "\u2013"))
        row += [Cell(num(round(t["wall_seconds"])) if t.get("wall_seconds") else "\u2013"),
                Cell(num(round(t["peak_memory_mb"])) if t.get("peak_memory_mb") else "\u2013")]
        rows.append(row)
    return Table(head, [True, False, *[True] * len(params), True, *([True] if d.get("forgetting") else []), True, True],
                 rows, title=f"{sw.label}/sweep.json: trials", note=f"test split: {d.get('test_from', '')}")


def _pct(v: float) -> str:
    """A relative drop as a signed share of the original score (+12.5%)."""
    return f"{v:+.1%}"


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "\u2013" if v is None else str(v)


def _params(params: JSON) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {_value(v)}" for k, v in params.items())


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-") or "sweep"
