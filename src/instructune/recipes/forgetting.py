"""Catastrophic forgetting, measured and cured side by side.

    instructune forgetting configs/forgetting-rotten-tomatoes.yaml

Top to bottom: the retention suite is scored on the original model; the target task is then
trained once per cure (plain full fine-tuning and plain LoRA always among them), each run in its
own process so its wall time and peak memory are its own; every tuned model is scored on the same
examples; the drops (bootstrap 95% intervals), their mean relative to the original's scores and the
target gain go to forgetting.json and a table. The suite reads test rows: the study only reports, and
whatever a cure's run chooses while it trains (`select: tradeoff`, a budget) reads validation rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from instructune.config import load_config, to_dict
from instructune.errors import InstructuneError
from instructune.files import write_text_atomic
from instructune.forgetting.kinds import general_probe, read_measures, text_perplexity
from instructune.forgetting.measures import mean_relative_drop, probe_capacity
from instructune.forgetting.suite import (
    RetentionSuite,
    RetentionTask,
    TargetTask,
    answer_rows,
    drops,
    suite_spec,
)
from instructune.hardware import eval_dtype, setup_threads
from instructune.models import load_model
from instructune.runs import cached, deep_merge, load_trained, train_run
from instructune.training.config import TrainConfig
from instructune.types import JSON, Log

MULTI_TASK = "multi-task"


@dataclass
class CureConfig:
    name: str
    """Row label in the table; `multi-task` trains on a mixture of the target and the retention tasks."""
    train: dict = field(default_factory=dict)
    """Train-config fields that differ from the shared `train` block (deep-merged)."""
    target_weight: float = 0.5
    """multi-task only: the share of draws from the target task; the rest is split evenly over the
    retention tasks."""


@dataclass
class ForgettingConfig:
    train: dict
    """The target task's training config (fields of `instructune train`), shared by every cure."""
    retention: list[RetentionTask]
    """Tasks whose scores must not drop."""
    cures: list[CureConfig] = field(default_factory=list)
    """Cures to compare; plain `full` and `lora` rows are added when absent (see baselines)."""
    baselines: dict = field(default_factory=lambda: {"full": {"method": {"name": "full"}},
                                                      "lora": {"method": {"name": "lora"}}})
    """Train overrides of the two reference rows, plain full fine-tuning and plain LoRA."""
    output_dir: Path = Path("runs/forgetting")
    """Where each cure's run and forgetting.json are written."""
    target_limit: int = 200
    """Target-task test examples scored before and after."""
    retention_limit: int | None = None
    """A cap on every retention task's `limit` (for quick runs); null = each task's own."""
    probe_prompts: int = 32
    """General-behaviour probe: general prompts of the shipped list's test half (0 = off, at most 32)."""
    probe_tokens: int = 48
    """Longest original answer generated for the probe."""
    text_source: str | None = "news-headlines"
    """Plain-text perplexity probe: a pack whose test-split texts are scored (null = off)."""
    text_limit: int = 32
    """Texts in the perplexity probe."""
    text_words: int = 120
    """Each probe text is cut to this many words."""
    score_precision: Literal["auto", "fp32", "bf16"] | None = None
    """Precision of every before/after score: auto (measured, as for training), fp32, or bf16 autocast
    (about twice as fast on CPUs with bf16 units, many times slower on those without); null = the
    training precision (fp16 training scores in fp32)."""
    isolate_runs: bool = True
    """Train each cure in a fresh process, so its wall time and peak memory are its own; false trains
    them in this process (saves some seconds of start-up per cure; peak memory then counts from the
    memory in use when the run starts)."""
    bootstrap_samples: int = 2000
    """Resamples for the 95% intervals."""
    seed: int = 0
    """Seed of subsets and bootstrap."""
    measures: dict[str, dict] = field(default_factory=dict)
    """Further kinds of retention measure (`forgetting/kinds/`), each by its key with its options
    (`{my-measure: {limit: 8}}`)."""

    def problems(self) -> list[str]:
        out = [] if 0 <= self.probe_prompts <= probe_capacity() else [
            f"probe_prompts must be 0 to {probe_capacity()} (the prompts in each half of the shipped list), "
            f"got {self.probe_prompts}"]
        read_measures(self.measures, "", out)
        return out


def forgetting(cfg: ForgettingConfig, log: Log = print) -> JSON:
    # --- every cure's training config, validated before any work starts
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = run_configs(cfg, out)
    first = next(iter(runs.values()))
    setup_threads(first.threads, log=log)

    # --- the retention suite on the original model
    suite = build_suite(cfg, first, log)
    suite_key = {k: v for k, v in to_dict(cfg).items() if k not in ("cures", "baselines", "output_dir", "train",
                                                                  "isolate_runs")}
    suite_key.update(model=first.model, data=to_dict(first.data), dtype=suite.dtype)

    def score_original() -> JSON:
        log(f"scoring the original model {first.model} on the retention suite")
        model, tok = load_model(first.model)
        return suite.score(model, tok, log=log)

    before = cached(out / "scores" / "original.json", suite_key, score_original, log)

    # --- each cure: train, score on the same examples, compare
    rows, afters = [], {}
    for name, run in runs.items():
        metrics = train_run(run, out / f"{name}.yaml", f"cure '{name}'", log, cfg.isolate_runs)

        def score_tuned(run: TrainConfig = run, name: str = name) -> JSON:
            log(f"cure '{name}': scoring")
            model, tok = load_trained(run)
            return suite.score(model, tok, original=before, log=log)

        after = cached(out / "scores" / f"{name}.json", {**suite_key, "run": to_dict(run)}, score_tuned, log)
        rows.append(_row(name, before, after, metrics, cfg))
        afters[name] = after
        _write(out, cfg, before, rows, answer_rows(before, afters))  # a crash later keeps what is done
    return {"before": before, "after": afters, "cures": rows, "answers": answer_rows(before, afters)}


def run_configs(cfg: ForgettingConfig, out: Path | None = None) -> dict[str, TrainConfig]:
    """Every cure's training config by name, baselines first: the shared `train` block with the cure's
    fields laid on top, into `out/<cure>`."""
    names = [c.name for c in cfg.cures]
    if len(set(names)) != len(names):
        raise InstructuneError(f"cure names must be unique, got {names}")
    cures = [CureConfig(n, over) for n, over in cfg.baselines.items() if n not in names] + list(cfg.cures)
    return {c.name: _train_config(cfg, c, Path(out or cfg.output_dir)) for c in cures}


def build_suite(cfg: ForgettingConfig, run: TrainConfig, log: Log = print) -> RetentionSuite:
    """The fixed examples every model of the study is scored on, from the target run's task and split: test
    rows, since the study reports and chooses nothing."""
    if not run.data.task.templates:
        raise InstructuneError("forgetting: train.data.templates must name the target template")
    retention = [replace(t, limit=min(t.limit, cfg.retention_limit or t.limit)) for t in cfg.retention]
    target = TargetTask(run.data.task, run.data.task.templates[0],
                        "likelihood" if run.eval_mode == "likelihood" else "generate", cfg.target_limit)
    spec = suite_spec(retention, general_probe.Options(cfg.probe_prompts, cfg.probe_tokens),
                      text_perplexity.Options(cfg.text_source, cfg.text_limit, cfg.text_words),
                      read_measures(cfg.measures, "", []), target)
    return RetentionSuite.build(spec, run.data.split, cfg.seed,
                                eval_dtype(cfg.score_precision or run.precision, run.model, log), held_out="test")


def _train_config(cfg: ForgettingConfig, cure: CureConfig, out: Path) -> TrainConfig:
    data = deep_merge(cfg.train, cure.train)
    data["output_dir"] = str(out / cure.name)
    if cure.name == MULTI_TASK and "mixture" not in cure.train:
        data["mixture"] = _multi_task_mixture(cfg, cure, data.get("data", {}))
    data.setdefault("keep", [{"source": t.source, "templates": [t.template], "template_file": t.template_file}
                             for t in cfg.retention])
    data.setdefault("data", {})["test_limit"] = 0  # scored here, on the suite's own examples
    data.setdefault("keep_checkpoints", 0)  # an unfinished cure is trained again, never resumed
    try:
        return load_config(TrainConfig, data=data)
    except InstructuneError as e:
        raise InstructuneError(f"cure '{cure.name}': {e}") from None


def _multi_task_mixture(cfg: ForgettingConfig, cure: CureConfig, target: dict) -> dict:
    """The target task plus every retention task, drawn with fixed weights (`target_weight` for the target)."""
    if not 0 < cure.target_weight < 1:
        raise InstructuneError(f"cure '{MULTI_TASK}': target_weight must be between 0 and 1 (exclusive), got "
                               f"{cure.target_weight}; 0.5 draws half the examples from the target task.")
    if not cfg.retention:
        raise InstructuneError(f"cure '{MULTI_TASK}' mixes the target with the retention tasks, and `retention:` "
                               f"is empty: list the tasks to keep, e.g. - {{source: bbc-news, template: topic}}.")
    if "source" not in target:
        raise InstructuneError(f"cure '{MULTI_TASK}': the shared train.data block needs a `source` (the target "
                               f"task) to mix with the retention tasks.")
    share = (1 - cure.target_weight) / len(cfg.retention)
    tasks = [{"source": target["source"], "templates": list(target.get("templates") or []),
              "template_file": target.get("template_file"), "weight": cure.target_weight}]
    tasks += [{"source": t.source, "templates": [t.template], "template_file": t.template_file, "weight": share}
              for t in cfg.retention]
    return {"tasks": tasks, "strategy": "weights"}


def _row(name: str, before: dict, after: dict, metrics: dict, cfg: ForgettingConfig) -> JSON:
    target_b, target_a = before["target"], after["target"]
    retention = drops(before, after, cfg.bootstrap_samples, cfg.seed)
    return {"cure": name, "target_metric": target_b["metric"], "target_before": target_b["mean"],
            "target_after": target_a["mean"], "gain": target_a["mean"] - target_b["mean"],
            "retention": retention, "mean_relative_drop": mean_relative_drop(retention) if retention else None,
            "trainable_params": metrics.get("trainable_params"), "trainable_pct": metrics.get("trainable_pct"),
            "wall_seconds": metrics.get("wall_seconds"), "score_seconds": after.get("seconds"),
            "peak_memory_mb": metrics.get("peak_memory_mb")}


def _write(out: Path, cfg: ForgettingConfig, before: dict, rows: list[dict], answers: dict) -> None:
    slim = {k: {kk: vv for kk, vv in v.items() if kk not in ("scores", "answers")} for k, v in before["measures"].items()}
    report = {"config": to_dict(cfg), "before": {"target": {k: v for k, v in before["target"].items()
                                                             if k not in ("scores", "evaluation")}, "measures": slim},
              "cures": rows, "answers": answers, "original_score_seconds": before.get("seconds")}
    write_text_atomic(out / "forgetting.json", json.dumps(report, indent=1))
    (out / "forgetting.md").write_text(markdown_table(rows))


def drop_cell(m: JSON) -> str:
    """A drop with its 95% interval: `+0.197 [+0.146, +0.248]`."""
    return f"{m['drop']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"


def markdown_table(rows: list[dict]) -> str:
    """Rows = cures; columns = target gain, each retention drop with its interval, cost, and the drops'
    mean relative to the original's scores."""
    if not rows:
        return ""
    keys = list(rows[0]["retention"])
    head = ["cure", f"target {rows[0]['target_metric']} (gain)", *[f"{k} drop [95% CI]" for k in keys],
            "trainable", "wall s", "peak MB", *(["mean relative drop"] if keys else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cure"], f"{r['target_after']:.3f} ({r['gain']:+.3f})"]
        cells += [drop_cell(r["retention"][k]) for k in keys]
        cells += [f"{r['trainable_pct']:.2f}%" if r["trainable_pct"] is not None else "",
                  f"{r['wall_seconds']:.0f}" if r["wall_seconds"] else "",
                  f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else ""]
        cells += [f"{r['mean_relative_drop']:+.1%}"] if keys else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\ndrop = before - after, positive = forgot (for cross-entropy measures: after - before); "
                              "mean relative drop = the mean over measures of drop / |before|, the share of the "
                              "original score lost.\n")


def load_forgetting_config(path: str, overrides: list[str]) -> ForgettingConfig:
    return load_config(ForgettingConfig, path, overrides)
