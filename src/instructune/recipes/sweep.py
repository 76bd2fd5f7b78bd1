"""Hyperparameter search on the validation split, with forgetting as an optional second objective.

(A sweep strings training runs together: each trial is `training.trainer.train`, in process, so each
validation can prune a trial and each trained model can be scored.)

    instructune sweep configs/sweep-lora-rotten-tomatoes.yaml [--resume] [--workers 2] [--storage URL]

Top to bottom: the search space and objective are checked against the config; Optuna (TPE, a grid
for list-only spaces; median or Hyperband pruning from every validation) proposes trials, each a
training run on the train split scored on the validation split only (the test split stays sealed);
with `forgetting:` each trial's model is also scored on a retention suite built on validation rows
and the study is multi-objective (gain against forgetting, the mean relative drop: a Pareto front).
When the trials are done, the chosen configuration (the best objective within `forgetting_budget`)
is written to best.yaml, trained once more and scored on the test split, once: the target's test
rows and, with `forgetting:`, the same suite built on test rows. The study lives in SQLite in the
sweep folder, so a killed sweep resumes; `--workers` and `--storage` share it between processes and
machines.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
import yaml

from instructune.config import apply_overrides, from_dict, load_config, read_yaml, to_dict
from instructune.data.task import load_split
from instructune.data.task import templates as task_templates
from instructune.errors import InstructuneError, collect
from instructune.forgetting.measures import mean_relative_drop
from instructune.forgetting.suite import RetentionSuite, drops
from instructune.hardware import setup_threads, usable_cpus
from instructune.metrics import higher_is_better
from instructune.models import load_model
from instructune.report import plots
from instructune.search import curve, space
from instructune.search.forgetting import SECOND_OBJECTIVE, SweepForgetting
from instructune.search.study import finished, open_study, pareto, storage
from instructune.training.config import TrainConfig, budget_problems
from instructune.training.trainer import train
from instructune.types import JSON, Log


@dataclass
class SweepSettings:
    """The `sweep:` block of a training config."""

    params: dict = field(default_factory=dict)
    """Config fields to search: `path: [values]` or `path: {low, high, log, step}` (see search/space.py)."""
    trials: int = 20
    """Finished (completed or pruned) trials to run in all, over every worker."""
    objective: str = "val_loss"
    """A validation score to optimise: val_loss, or val_ + a metric the template reports (val_accuracy,
    val_f1, val_rougeL, ...)."""
    direction: Literal["maximize", "minimize"] | None = None
    """null = the objective's own (minimize loss, maximize accuracy)."""
    pruner: Literal["none", "median", "hyperband"] = "median"
    """Stop weak trials early from their validations at eval_every (single objective only)."""
    forgetting: SweepForgetting | None = None
    """A retention suite (`retention`, `probe_prompts`, `text_source`, ... as in `instructune forgetting`):
    each trial is also scored on its validation rows and the study has a second objective, the mean
    relative drop (minimize); the chosen configuration is scored on its test rows once, at the end."""
    forgetting_budget: float | None = None
    """The largest mean relative drop a chosen trial may have, a share of the original model's scores
    (0.05 = lost 5% on average over the measures; with `forgetting`); null = any."""
    storage: str | None = None
    """An Optuna storage URL shared by workers on several machines; null = SQLite in the sweep folder."""
    final: bool = True
    """Train the chosen configuration once more and score it on the test split."""
    test_every_trial: bool = False
    """Score every trial on the test split too: for a grid that only measures (a data-size learning curve),
    so it needs final: false and pruner: none, and no `forgetting`; the scores never feed the choice."""
    seed: int = 0
    """Seed of the sampler."""

    def problems(self) -> list[str]:
        out = [] if self.trials >= 1 else [f"trials must be at least 1, got {self.trials}"]
        if not self.params:
            out.append("params: give at least one field to search, e.g. optim.lr: {low: 1.0e-5, high: 1.0e-3, "
                       "log: true}")
        if not (self.objective == "val_loss" or self.objective.startswith("val_")):
            out.append(f"objective {self.objective!r}: use val_loss or val_<metric> (val_accuracy, val_rougeL, ...)")
        if self.forgetting_budget is not None and not self.forgetting:
            out.append("forgetting_budget needs `forgetting:` (a retention suite to measure the drop on)")
        if self.forgetting_budget is not None:
            out += budget_problems(self.forgetting_budget)
        return out + self._sealed_problems()

    def _sealed_problems(self) -> list[str]:
        """`test_every_trial` is for grids that only measure: with anything that chooses, test rows would be
        scored beside the choice (and the final score would not be the only look at them)."""
        if not self.test_every_trial:
            return []
        out = []
        if self.final:
            out.append("test_every_trial: the chosen configuration's final test score would no longer be the only "
                       "look at the test split; a grid that only measures sets final: false")
        if self.forgetting is not None:
            out.append("test_every_trial: `forgetting:` makes the search choose a trade-off (on validation rows); "
                       "measure a grid with test_every_trial, or choose with forgetting, not both")
        if self.pruner != "none":
            out.append(f"test_every_trial: pruner {self.pruner} stops trials on their validations, so some points of "
                       "the measured grid would have no test score; set pruner: none")
        return out

    @property
    def metric(self) -> str:
        return self.objective.removeprefix("val_")

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize" if self.direction else higher_is_better(self.metric)


def load_sweep(path: str | Path | None, overrides: list[str] = (), data: dict | None = None) -> tuple[dict, SweepSettings]:
    """(the training config as a dict, its `sweep:` block), both checked; every problem reported at once."""
    raw = apply_overrides({**(data or {}), **(read_yaml(path) if path else {})}, list(overrides))
    problems: list[str] = []
    settings = from_dict(SweepSettings, raw.pop("sweep", None) or {}, "sweep.", problems)
    collect(problems, f"sweep config {path or ''} is invalid")
    base = to_dict(load_config(TrainConfig, data=raw))  # the training config is checked whole, defaults filled
    return base, settings


def sweep(base: dict, s: SweepSettings, resume: bool = False, workers: int = 1, worker: bool = False,
          log: Log = print, join: Callable[[], object] | None = None) -> JSON:
    """Run the search (`workers` processes share the machine; this one is a `worker` when another process
    writes the results, after calling `join` to wait for the other workers)."""
    # --- the space, the objective and the forgetting suite, checked before any trial
    out = Path(base["output_dir"])
    params, problems = space.parse(s.params)
    problems += _objective_problems(base, s)
    collect(problems, "the sweep cannot start")
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, usable_cpus()[0] // max(workers, 1))  # the workers share this machine's CPUs
    setup_threads(base.get("threads") or threads, log=None if worker else log)
    suite, before = _retention(s, base, log) if s.forgetting else (None, None)

    # --- the study: created, or continued with --resume
    directions = ["maximize" if s.maximize else "minimize"] + (["minimize"] if suite else [])
    study = open_study(storage(s.storage, out), directions, params, s.seed, s.pruner, study_key(base, s),
                       resume or worker)
    done = len(finished(study))
    log(f"sweep: {len(params)} parameters, {s.trials} trials ({done} done), objective {s.objective} "
        f"({directions[0]}){', forgetting as a second objective' if suite else ''}; study in {out}")

    # --- the trials
    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        return _trial(trial, base, s, params, out, base.get("threads") or threads, suite, before, log)

    if done < s.trials:  # optimize runs a trial before its callback can stop it: a study with its count runs none
        study.optimize(objective, catch=(InstructuneError,),
                       callbacks=[optuna.study.MaxTrialsCallback(s.trials, states=(
                           optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])
    if worker:
        return {}
    if join is not None:
        join()  # the other workers finish their last trials first

    # --- the choice, its config, and the test split, once
    chosen = _choose(study, s, suite is not None)
    best = space.apply(base, chosen.params)
    best["output_dir"] = str(out / "final")
    (out / "best.yaml").write_text("# the chosen configuration of the sweep in this folder\n"
                                   + yaml.safe_dump(best, sort_keys=False))
    test = _final(best, out, s, log) if s.final else None
    report = _summary(study, s, chosen, test, suite is not None)
    if s.test_every_trial and len(params) == 1 and params[0].choices and all(
            isinstance(v, (int, float)) for v in params[0].choices):
        report["learning_curve"] = _learning_curve(report, params[0].path, s.metric, base, out)
    (out / "sweep.json").write_text(json.dumps(report, indent=1))
    (out / "sweep.md").write_text(markdown(report))
    log(f"chose trial {chosen.number}: {json.dumps(chosen.params)}; wrote {out / 'best.yaml'}, sweep.json, sweep.md")
    return report


def start(base: dict, s: SweepSettings, resume: bool = False) -> None:
    """Create (or, with `resume`, check) the study before several workers join it."""
    params, problems = space.parse(s.params)
    collect(problems + _objective_problems(base, s), "the sweep cannot start")
    out = Path(base["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    directions = ["maximize" if s.maximize else "minimize"] + (["minimize"] if s.forgetting else [])
    open_study(storage(s.storage, out), directions, params, s.seed, s.pruner, study_key(base, s), resume)


def study_key(base: dict, s: SweepSettings) -> JSON:
    """What a study is continued only by: the config, and the unit of its forgetting objective (a study
    whose second objective was a raw mean drop cannot be continued in relative units)."""
    return {"train": base, "sweep": to_dict(s), **({"second_objective": SECOND_OBJECTIVE} if s.forgetting else {})}


def _objective_problems(base: dict, s: SweepSettings) -> list[str]:
    """An objective the data's templates cannot produce is refused before the first trial."""
    if s.metric == "loss" or base.get("mixture"):
        return []
    cfg = load_config(TrainConfig, data=base)
    produced = {"loss"} | {k for t in task_templates(cfg.data.task, cfg.data.split).values()
                           for m in t.metrics for k in _keys(m, t.task)}
    if s.metric not in produced:
        return [f"sweep.objective: {s.objective} is not a score these templates report; they report "
                f"{', '.join('val_' + k for k in sorted(produced))}"]
    return []


def _keys(metric: str, task: str) -> list[str]:
    keys = {"rouge": ["rouge1", "rouge2", "rougeL", "rougeLsum"]}.get(metric, [metric])
    return keys + (["invalid_rate"] if task == "classification" else [])


def _retention(s: SweepSettings, base: dict, log: Log) -> tuple[RetentionSuite, dict]:
    """The retention suite the trials are scored on, on validation rows (the search chooses on it), and the
    original model's scores on it."""
    cfg = load_config(TrainConfig, data=base)
    suite = s.forgetting.suite(cfg, s.seed, held_out="validation")
    log(f"scoring the original model {cfg.model} on the retention suite (validation rows)")
    model, tok = load_model(cfg.model)
    return suite, suite.score(model, tok)


def _trial(trial: optuna.Trial, base: dict, s: SweepSettings, params: list, out: Path, threads: int,
           suite: RetentionSuite | None, before: dict | None, log: Log) -> float | tuple[float, float]:
    """One training run on the train split, scored on validation (and on the retention suite)."""
    values = space.sample(trial, params, base)
    run = space.apply(base, values)
    folder = out / "trials" / f"trial-{trial.number:04d}"
    shutil.rmtree(folder, ignore_errors=True)  # a trial retried after its process died starts afresh
    run.update(output_dir=str(folder), keep_checkpoints=0, save_every=0, threads=threads)
    if not s.test_every_trial:
        run["data"] = {**run["data"], "test_limit": 0}  # the test split stays sealed during the search
    cfg = load_config(TrainConfig, data=run)
    trial.set_user_attr("pid", os.getpid())

    def observe(step: int, scores: JSON) -> None:
        if len(trial.study.directions) == 1 and isinstance(scores.get(s.metric), (int, float)):
            trial.report(float(scores[s.metric]), step)
            if trial.should_prune():
                log(f"trial {trial.number}: pruned at step {step} ({s.objective} {scores[s.metric]:.4f})")
                raise optuna.TrialPruned()

    start = time.time()
    result = train(cfg, log=lambda *_: None, observe=observe)
    value = float(result.validation[s.metric])
    trial.set_user_attr("validation", result.validation)
    if s.test_every_trial:  # a measuring grid's points; never read by the choice (`_choose` reads values)
        trial.set_user_attr("test", result.test)
    trial.set_user_attr("wall_seconds", time.time() - start)
    trial.set_user_attr("peak_memory_mb", result.metrics.get("peak_memory_mb"))
    outcome: float | tuple[float, float] = value
    if suite is not None:
        after = suite.score(result.model, result.tokenizer, original=before)
        measures = drops(before, after, s.forgetting.bootstrap_samples, s.seed)
        trial.set_user_attr("drops", {k: m["drop"] for k, m in measures.items()})
        trial.set_user_attr("relative_drops", {k: m["relative_drop"] for k, m in measures.items()})
        outcome = (value, mean_relative_drop(measures))
    for sub in ("adapter", "model", "best"):  # a trial's weights are not kept: the chosen one is trained again
        shutil.rmtree(folder / sub, ignore_errors=True)
    log(f"trial {trial.number}: {json.dumps(values)} -> {s.objective} {value:.4f}"
        + (f", {SECOND_OBJECTIVE} {outcome[1]:+.2%}" if suite is not None else ""))
    return outcome


def _choose(study: optuna.Study, s: SweepSettings, multi: bool) -> optuna.trial.FrozenTrial:
    """Single objective: the best trial. Two: the best objective on the Pareto front within the budget."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InstructuneError("no trial of the sweep completed (all pruned or failed; their errors are in the "
                               "log above): widen the search space or lower the pruning (sweep.pruner: none).")
    if not multi:
        return study.best_trial
    front = [t for t in pareto(study) if s.forgetting_budget is None or t.values[1] <= s.forgetting_budget]
    if not front:
        raise InstructuneError(f"no trial on the Pareto front stays within forgetting_budget {s.forgetting_budget}"
                               "; raise the budget or search other settings.")
    return max(front, key=lambda t: t.values[0] if s.maximize else -t.values[0])


def _learning_curve(report: dict, param: str, metric: str, base: dict, out: Path) -> list[JSON]:
    """Test score against `param` with bootstrap intervals, plotted to learning_curve.png."""
    cfg = load_config(TrainConfig, data=base)
    n = len(load_split(cfg.data.task, cfg.data.split, "test"))
    n = min(n, cfg.data.test_limit) if cfg.data.test_limit is not None else n
    points = curve.points(report["trials"], param, metric, n)
    if points:
        (out / "learning_curve.png").write_bytes(plots.learning_curve(points, param, metric))
    return points


def _final(best: dict, out: Path, s: SweepSettings, log: Log) -> JSON:
    """The chosen configuration trained once more, its test split scored (and with `forgetting:`, the suite on
    test rows): the only look at the test split."""
    log("training the chosen configuration once more, and scoring it on the test split")
    cfg = load_config(TrainConfig, data={**best, "keep_checkpoints": 0, "save_every": 0})
    result = train(cfg, log=lambda *_: None, overwrite=True)
    final = {"test": result.metrics["test"], "validation": result.metrics["validation"],
             "output_dir": str(out / "final")}
    if s.forgetting is not None:
        suite = s.forgetting.suite(cfg, s.seed, held_out="test")
        log(f"scoring the original model {cfg.model} and the chosen one on the retention suite (test rows)")
        model, tok = load_model(cfg.model)
        before = suite.score(model, tok)
        del model
        after = suite.score(result.model, result.tokenizer, original=before)
        measures = drops(before, after, s.forgetting.bootstrap_samples, s.seed)
        final["forgetting"] = {"measures": measures, "mean_relative_drop": mean_relative_drop(measures)}
    return final


def _summary(study: optuna.Study, s: SweepSettings, chosen: optuna.trial.FrozenTrial, test: dict | None,
             multi: bool) -> JSON:
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        trials.append({"number": t.number, "state": t.state.name.lower(), "params": t.params,
                       "values": t.values, "validation": t.user_attrs.get("validation"),
                       "test": t.user_attrs.get("test") or None,
                       "drops": t.user_attrs.get("drops"), "relative_drops": t.user_attrs.get("relative_drops"),
                       "wall_seconds": t.user_attrs.get("wall_seconds"),
                       "peak_memory_mb": t.user_attrs.get("peak_memory_mb"),
                       "pruned_at": max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values
                       else None})
    importance = {}
    if sum(t["state"] == "complete" for t in trials) >= 4:  # fewer trials cannot tell parameters apart
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the evaluator's notes on its own direction convention
            try:
                importance = {k: float(v) for k, v in optuna.importance.get_param_importances(
                    study, target=(lambda t: t.values[0]) if multi else None).items()}
            except (RuntimeError, ValueError, ZeroDivisionError):
                importance = {}
    return {"objective": s.objective, "direction": "maximize" if s.maximize else "minimize",
            "forgetting": multi, "second_objective": SECOND_OBJECTIVE if multi else None,
            "forgetting_budget": s.forgetting_budget, "trials": trials,
            "chosen": {"number": chosen.number, "params": chosen.params, "values": chosen.values},
            "pareto": [t.number for t in pareto(study)] if multi else None, "importance": importance,
            "test": test["test"] if test else None, "test_forgetting": (test or {}).get("forgetting"),
            "test_from": ("the chosen configuration trained once more in final/ (trials never saw the test split)"
                          if test else "not scored (sweep.final: false)")}


def markdown(r: JSON) -> str:
    """Every trial: parameters, validation score(s), state, wall time, peak memory; then the choice."""
    head = ["trial", "state", "parameters", r["objective"], *([SECOND_OBJECTIVE] if r["forgetting"] else []),
            "wall s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in r["trials"]:
        value = t["values"][0] if t["values"] else None
        cells = [str(t["number"]), t["state"] + (f" (step {t['pruned_at']})" if t["pruned_at"] is not None else ""),
                 ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items()),
                 f"{value:.4f}" if value is not None else "-"]
        if r["forgetting"]:
            cells.append(f"{t['values'][1]:+.2%}" if t["values"] else "-")
        cells += [f"{t['wall_seconds']:.0f}" if t["wall_seconds"] else "-",
                  f"{t['peak_memory_mb']:.0f}" if t["peak_memory_mb"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    chosen = r["chosen"]
    lines += ["", f"Chosen: trial {chosen['number']} ({json.dumps(chosen['params'])}). Test split: "
              + (json.dumps({k: round(v, 4) for k, v in r["test"].items() if isinstance(v, float)}) if r["test"]
                 else "not scored") + f" ({r['test_from']})."]
    if f := r.get("test_forgetting"):
        lines.append(f"Forgetting on the suite's test rows (scored once): {SECOND_OBJECTIVE} "
                     f"{f['mean_relative_drop']:+.2%}; drops " + ", ".join(
                         f"{k} {m['drop']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]" for k, m in f["measures"].items()))
    if r["importance"]:
        lines.append("Parameter importance: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items()))
    return "\n".join(lines) + "\n"
