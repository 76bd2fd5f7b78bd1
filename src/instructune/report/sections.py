"""The report's sections, built from what `data.discover` found; each one only when its data exists.

Order: what came out first (results, forgetting, sequential training), then how (loss curves,
before/after per task, cost, examples), and what produced it last, collapsed (provenance).
"""

from __future__ import annotations

import json

import yaml

from instructune.data import inspect
from instructune.metrics import CHART, HEADLINE
from instructune.report import plots
from instructune.report.blocks import (
    Block,
    Card,
    Cards,
    Cell,
    Chart,
    Details,
    KeyValues,
    Section,
    Table,
    Tokens,
    num,
)
from instructune.report.data import EvalRun, Runs, TrainingRun, setting_kind
from instructune.report.examples import examples_section
from instructune.report.sequential import sequential_section
from instructune.report.studies import before_after_section, forgetting_section
from instructune.report.sweeps import sweep_section
from instructune.report.watch import watch_section
from instructune.types import JSON


def build_sections(runs: Runs) -> list[Section]:
    colors = plots.Colors()

    found = [results_section(runs), forgetting_section(runs, colors), sequential_section(runs), sweep_section(runs),
             loss_section(runs, colors), watch_section(runs, colors), before_after_section(runs, colors), cost_section(runs, colors),
             examples_section(runs), trained_tokens_section(runs), provenance_section(runs)]
    return [s for s in found if s is not None]


# ----------------------------------------------------------------------------- trained tokens

SHOWN_VIEWS = 4


def trained_tokens_section(runs: Runs) -> Section | None:
    """The first training examples of each run token by token, as the model saw them, with the tokens that
    carried loss highlighted; runs that trained on the same data share one view."""
    views: dict[str, tuple[dict, list[str]]] = {}
    for run in runs.trainings:
        if run.inspect and run.inspect.get("examples"):
            key = json.dumps(run.inspect, sort_keys=True)
            views.setdefault(key, (run.inspect, []))[1].append(run.label)
    if not views:
        return None
    s = Section("trained-tokens", "What the model was trained on",
                "The first training examples exactly as the model saw them, one box per token; highlighted tokens "
                "carry the loss (the completion, or the assistant turns of a conversation), the rest is context.",
                nav="Trained tokens")
    for view, labels in list(views.values())[:SHOWN_VIEWS]:
        shown = {**view, "examples": view["examples"][:2]}
        s.blocks.append(Tokens(", ".join(labels), inspect.to_html(shown), inspect.to_text(shown, colour=False)))
    return s


# ----------------------------------------------------------------------------- provenance

def provenance_section(runs: Runs) -> Section:
    """run_info.json when there is one (a demo); else the configs of the runs found."""
    # collapsed: with many runs it is pages long, and it is looked up, not read
    s = Section("provenance", "What produced this report",
                "The configuration, seed, package versions and checksums recorded by the runs themselves.",
                nav="Provenance", collapsed=True)
    for info in runs.infos:
        d = info.data
        pairs = [(k, _scalar(d[k])) for k in d if not isinstance(d[k], (dict, list))]
        s.blocks.append(KeyValues(pairs, title=f"{info.label}/run_info.json"))
        for key in [k for k in d if isinstance(d[k], dict) and k != "config"]:
            if all(not isinstance(v, (dict, list)) for v in d[key].values()):
                s.blocks.append(KeyValues([(k, _scalar(v)) for k, v in d[key].items()], title=key))
            else:
                s.blocks.append(Details(key, yaml.safe_dump(d[key], sort_keys=False)))
        if "config" in d:
            s.blocks.append(Details("config", yaml.safe_dump(d["config"], sort_keys=False)))
    if not runs.infos:
        for run in runs.trainings:
            s.blocks.append(KeyValues(_training_pairs(run), title=run.label))
            if run.config:
                s.blocks.append(Details(f"{run.label}/config.yaml", yaml.safe_dump(run.config, sort_keys=False)))
        for ev in runs.evals:
            keys = ("data", "template", "split", "mode", "seed")
            s.blocks.append(KeyValues([(k, _scalar(ev.data[k])) for k in keys if k in ev.data],
                                      title=f"{ev.label}/eval.json"))
        for study, name in [*[(fg, "forgetting.json") for fg in runs.forgettings],
                            *[(sq, "sequential.json") for sq in runs.sequentials]]:
            if "config" in study.data:
                s.blocks.append(Details(f"{study.label}/{name} config",
                                        yaml.safe_dump(study.data["config"], sort_keys=False)))
    files = [r.path / "metrics.json" for r in runs.trainings] + [
        r.path for r in [*runs.evals, *runs.forgettings, *runs.sequentials, *runs.sweeps, *runs.infos]]
    s.blocks.append(Details(f"files read ({len(files)})", "\n".join(str(f) for f in sorted(files))))
    return s


def _training_pairs(run: TrainingRun) -> list[tuple[str, str]]:
    m, c = run.metrics, run.config or {}
    pairs = [("model", m.get("model", c.get("model"))), ("method", m.get("method")), ("task", m.get("task")),
             ("templates", ", ".join(m.get("templates") or [])), ("seed", c.get("seed")),
             ("data", (c.get("data") or {}).get("source")), ("lr", (c.get("optim") or {}).get("lr")),
             ("steps", m.get("steps")), ("stopped", m.get("stopped"))]
    return [(k, _scalar(v)) for k, v in pairs if v not in (None, "")]


def _scalar(v: object) -> str:
    return num(v, digits=6) if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- results

def score_keys(metric_dicts: list[JSON], extra: tuple[str, ...] = ()) -> list[str]:
    """The headline scores any of `metric_dicts` has, in the metric registry's order (then `extra`)."""
    return [k for k in [*HEADLINE, *extra] if any(isinstance(m.get(k), (int, float)) for m in metric_dicts)]


def results_section(runs: Runs) -> Section | None:
    tested = [r for r in runs.trainings if r.metrics.get("test")]
    if not runs.evals and not tested:
        return None
    s = Section("results", "Results", "Base model zero-/few-shot against fine-tuned models, on the same examples "
                "within each table.")
    cards = highlight_cards(runs.evals, tested)
    if cards:
        s.blocks.append(Cards(cards))
    for ev in runs.evals:
        s.blocks += eval_blocks(ev)
    if tested:
        s.blocks.append(test_table(tested))
    return s


def eval_blocks(ev: EvalRun) -> list[Block]:
    d, results = ev.data, ev.data["results"]
    keys = score_keys([r["metrics"] for r in results])
    cols = ["setting", "kind", "shots", "n", *keys, "examples/s"]
    rows = []
    for r in results:
        m, kind = r["metrics"], setting_kind(r)
        rows.append([Cell(str(r["setting"])), Cell(kind, kind), Cell(num(r["shots"])),
                     Cell(num((r.get("settings") or {}).get("n"))), *[Cell(num(m.get(k))) for k in keys],
                     Cell(num((r.get("timings") or {}).get("examples_per_s"), digits=1))])
    title = " / ".join(str(d[k]) for k in ("data", "template", "split") if k in d) or ev.label
    table = Table(cols, [c not in ("setting", "kind") for c in cols], rows, title=f"{title} ({ev.label}/eval.json)",
                  note=f"mode: {d.get('mode', '?')}; every setting scored on the same seeded examples.")
    chart_keys = [k for k in CHART if k in keys][:3]
    if not chart_keys:
        return [table]
    png = plots.metric_bars([(_setting_label(r), setting_kind(r)) for r in results],
                            {k: [r["metrics"].get(k) for r in results] for k in chart_keys})
    chart = Chart(f"results-{_stem(ev.label)}", png, f"Longer is better. Grey: the base model without (light) and "
                  f"with (dark) in-context examples; colour: fine-tuned. Read how far tuning moves "
                  f"{', '.join(chart_keys)} past prompting alone.", f"{', '.join(chart_keys)} per setting")
    return [chart, table]


def _setting_label(r: JSON) -> str:
    return f"{r['setting']} ({r['shots']}-shot)" if r.get("shots") else str(r["setting"])


def test_table(runs: list[TrainingRun]) -> Table:
    keys = score_keys([r.metrics["test"] for r in runs], extra=("loss",))
    cols = ["run", "method", "model", "steps", "n", *keys]
    rows = [[Cell(r.label), Cell(str(r.metrics.get("method", ""))), Cell(str(r.metrics.get("model", ""))),
             Cell(num(r.metrics.get("steps"))), Cell(num(r.metrics.get("test_examples"))),
             *[Cell(num(r.metrics["test"].get(k))) for k in keys]] for r in runs]
    return Table(cols, [c not in ("run", "method", "model") for c in cols], rows,
                 title="Fine-tuned runs: test split (metrics.json)",
                 note="Scored by the training run on its own test subset of n examples (the best-validation "
                      "weights; a mean over templates when a run has several). An evaluation's table above "
                      "scores its own seeded subset, so the two numbers for one run can differ.")


def highlight_cards(evals: list[EvalRun], tested: list[TrainingRun]) -> list[Card]:
    """The headline score of the base model at zero shots, its best few-shot, and the best tuned setting,
    each saying which examples it is on (an evaluation's subset is not a run's own test split)."""
    cards: list[Card] = []
    for ev in evals[:2]:
        results = ev.data["results"]
        keys = [k for k in CHART if any(isinstance(r["metrics"].get(k), (int, float)) for r in results)]
        if not keys:
            continue
        key = keys[0]
        by_kind: dict[str, list[dict]] = {}
        for r in results:
            if isinstance(r["metrics"].get(key), (int, float)):
                by_kind.setdefault(setting_kind(r), []).append(r)
        for kind, label in (("base", "base, zero-shot"), ("few-shot", "base, best few-shot"),
                            ("tuned", "best fine-tuned")):
            if kind in by_kind:
                best = max(by_kind[kind], key=lambda r: r["metrics"][key])
                cards.append(Card(f"{key} \u00b7 {label}", num(best["metrics"][key]),
                                  f"{_setting_label(best)}; {_examples_of(ev, best)}", kind))
    if not cards:
        for r in tested[:4]:
            keys = score_keys([r.metrics["test"]], extra=("loss",))
            if keys:
                cards.append(Card(f"test {keys[0]}", num(r.metrics["test"][keys[0]]),
                                  f"{r.label}; {_run_test_examples(r)}", "tuned"))
    return cards[:6]


def _examples_of(ev: EvalRun, result: JSON) -> str:
    """Which examples an evaluation's score is on: its own seeded subset of a split."""
    n, split = (result.get("settings") or {}).get("n"), ev.data.get("split", "test")
    return (f"{num(n)} {split} examples picked by the evaluation ({ev.label}/eval.json); a run's own test score "
            "uses its own subset")


def _run_test_examples(run: TrainingRun) -> str:
    """Which examples a run's own test score is on."""
    n = run.metrics.get("test_examples")
    return f"the run's own test split ({num(n)} examples, metrics.json)" if n else "the run's own test split"


# ----------------------------------------------------------------------------- loss curves

def loss_series(runs: Runs) -> dict[str, list[tuple[str, list[tuple[int, float]], list[tuple[int, float]]]]]:
    """Per study ("" = the stand-alone runs): (name, train loss, validation loss) of every run that logged."""
    out = {}
    for group, members in runs.groups().items():
        series = [(r.name, r.curve("loss"), r.curve("val_loss")) for r in members if r.log]
        if series:
            out[group] = series
    return out


def loss_section(runs: Runs, colors: plots.Colors) -> Section | None:
    series = loss_series(runs)
    if not series:
        return None
    s = Section("loss-curves", "Loss curves", "Training and validation loss of every run, as logged in "
                "train_log.jsonl.")
    for group, curves in series.items():
        png = plots.loss_curves(curves, colors)
        where = f"the {runs.studies.get(group, 'forgetting')} study in {group}/" if group else "training runs"
        s.blocks.append(Chart(f"loss-{_stem(group or 'runs')}", png,
                              f"{where[:1].upper()}{where[1:]}: train loss should fall; validation loss that turns "
                              "up while train loss keeps falling is over-fitting (the best-validation weights are "
                              "the ones evaluated).", f"loss curves of {where}"))
    cols = ["run", "method", "steps", "last train loss", "validation loss (best)", "stopped", "tokens/s"]
    rows = []
    for r in [r for rs in runs.groups().values() for r in rs if r.log]:
        train = r.curve("loss")
        rows.append([Cell(r.label), Cell(str(r.metrics.get("method", ""))), Cell(num(r.metrics.get("steps"))),
                     Cell(num(train[-1][1]) if train else "\u2013"),
                     Cell(num((r.metrics.get("validation") or {}).get("loss"))),
                     Cell(str(r.metrics.get("stopped", ""))), Cell(num(r.metrics.get("tokens_per_s"), digits=0))])
    s.blocks.append(Table(cols, [c not in ("run", "method", "stopped") for c in cols], rows,
                          note="validation loss (best): metrics.json's validation scores of the weights kept."))
    return s


# ----------------------------------------------------------------------------- cost

def cost_rows(runs: Runs) -> list[JSON]:
    """One row per training run; a forgetting cure whose run folder is not there comes from forgetting.json."""
    rows = [{"label": r.label, "key": r.name, "method": r.metrics.get("method"), **{
        k: r.metrics.get(k) for k in ("trainable_params", "total_params", "trainable_pct", "peak_memory_mb",
                                      "wall_seconds", "tokens_per_s")}} for rs in runs.groups().values() for r in rs]
    have = {(r.group, r.path.name) for r in runs.trainings}
    for fg in runs.forgettings:
        for c in fg.data["cures"]:
            if (fg.label, c["cure"]) not in have:
                rows.append({"label": f"{fg.label}/{c['cure']}", "key": c["cure"], "method": None, **{
                    k: c.get(k) for k in ("trainable_params", "trainable_pct", "peak_memory_mb", "wall_seconds")}})
    return rows


def cost_section(runs: Runs, colors: plots.Colors) -> Section | None:
    rows = [r for r in cost_rows(runs) if r.get("trainable_params") or r.get("peak_memory_mb")]
    if not rows:
        return None
    png = plots.cost_bars([(r["label"], r["key"], r.get("trainable_params"), r.get("peak_memory_mb")) for r in rows],
                          colors)
    chart = Chart("cost", png, "What each method costs: parameters it trains (log scale: each grid line is 10\u00d7) "
                  "and the peak memory of its training process (GPU memory allocated on CUDA, else the process's "
                  "peak resident memory).", "trainable parameters and peak memory per run")
    cols = ["run", "method", "trainable params", "total params", "trainable %", "peak memory MB", "wall s",
            "tokens/s"]
    table_rows = [[Cell(r["label"]), Cell(str(r.get("method") or "")), Cell(num(r.get("trainable_params"))),
                   Cell(num(r.get("total_params"))), Cell(_pct(r.get("trainable_pct"))),
                   Cell(num(r.get("peak_memory_mb"), digits=0)), Cell(num(r.get("wall_seconds"), digits=1)),
                   Cell(num(r.get("tokens_per_s"), digits=0))] for r in rows]
    table = Table(cols, [c not in ("run", "method") for c in cols], table_rows)
    return Section("cost", "Trainable parameters and memory", "The price of each method, from metrics.json "
                   "(or forgetting.json).", [chart, table], nav="Cost")


def _pct(v: float | None) -> str:
    return "\u2013" if v is None else f"{v:.2f}%"


def _stem(label: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)
    return keep.strip("-") or "run"
