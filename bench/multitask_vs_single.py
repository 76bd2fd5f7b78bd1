"""Multi-task versus single-task fine-tuning at the same budget, task by task.

    .venv/bin/python bench/multitask_vs_single.py [configs/multitask-news.yaml] [key=value ...]

Trains the multi-task config once (T tasks, S steps), then one single-task run per task with
the same settings and S/T steps (warm-up scaled alike): each task gets the same number of
training examples in both, on average. Every run is scored on the same test examples of its
task(s). A task passes when the multi-task score reaches 90% of the single-task one. Runs whose
config is unchanged are reused. Writes bench/results/multitask.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from instructune.config import apply_overrides, load_config, read_yaml, to_dict
from instructune.data.mixture import task_names
from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.results import write_results
from instructune.training.config import TrainConfig

THRESHOLD = 0.9
PRIMARY = ("accuracy", "rougeL")  # the task metric compared: accuracy, else ROUGE-L F1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default="configs/multitask-news.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the multi-task config")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    data = apply_overrides(read_yaml(Path(args.config)), args.overrides)
    multi = load_config(TrainConfig, data=data)
    if multi.mixture is None:
        sys.exit(f"{args.config}: needs a `mixture:` of tasks to compare with single-task runs")
    tasks = multi.mixture.tasks
    names = task_names([t.source for t in tasks])
    steps = multi.max_steps or 0
    single_steps = max(1, round(steps / len(tasks)))
    runs = {"multi-task": multi}
    for name, task in zip(names, tasks, strict=True):
        one = json.loads(json.dumps(to_dict(multi)))
        one["mixture"] = None
        one["data"].update(source=task.source, templates=list(task.templates), template_file=task.template_file)
        one["max_steps"] = single_steps
        one["optim"]["warmup_steps"] = math.ceil(multi.optim.warmup_steps / len(tasks))
        one["output_dir"] = f"{multi.output_dir}-single-{name}"
        runs[name] = load_config(TrainConfig, data=one)

    metrics = {label: train(run) for label, run in runs.items()}
    rows = []
    for name, task in zip(names, tasks, strict=True):
        tid = task.templates[0] if task.templates else ""
        multi_scores = metrics["multi-task"]["test"].get("per_task", {}).get(f"{name}/{tid}", {})
        single_scores = metrics[name]["test"]
        key = next(k for k in PRIMARY if k in single_scores)
        m, s = multi_scores[key], single_scores[key]
        rows.append({"task": name, "template": tid, "metric": key, "single": s, "multi": m,
                     "ratio": m / s if s else math.inf, "passes": m >= THRESHOLD * s,
                     "single_steps": single_steps, "single_wall_s": metrics[name]["wall_seconds"]})
    result = {"config": args.config, "multi_steps": steps, "single_steps": single_steps,
              "multi_wall_s": metrics["multi-task"]["wall_seconds"],
              "test_limit": multi.data.test_limit, "rows": rows,
              "realised_epoch0": metrics["multi-task"].get("mixture_epoch0"),
              "machine": machine_summary(shapes_of(multi.model))}
    write_results(Path(args.out), "multitask", result, markdown(result))


def train(run: Any) -> dict[str, Any]:
    """Train in a fresh process, or reuse a finished run of the same config."""
    folder = Path(run.output_dir)
    done = folder / "metrics.json"
    if done.exists() and yaml.safe_load((folder / "config.yaml").read_text()) == to_dict(run):
        print(f"reusing {folder} (same config)")
        return json.loads(done.read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = folder.parent / f"{folder.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(run), sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "instructune", "train", str(cfg_path)], env=os.environ.copy())
    if proc.returncode != 0 or not done.exists():
        sys.exit(f"training {cfg_path} failed (exit {proc.returncode}); its output is above")
    return json.loads(done.read_text())


def markdown(r: dict[str, Any]) -> str:
    lines = [f"{describe_machine(r['machine'])}.", "", f"Multi-task ({r['multi_steps']} steps) versus one single-task run "
             f"per task ({r['single_steps']} steps each), same settings otherwise; {r['test_limit']} test "
             f"examples per task. Pass: multi-task reaches {THRESHOLD:.0%} of the single-task score.", "",
             "| task | share of multi-task draws | metric | single-task | multi-task | multi / single | pass |",
             "|---|---:|---|---:|---:|---:|---|"]
    drawn = {task: sum(counts.values()) for task, counts in (r.get("realised_epoch0") or {}).items()}
    for row in r["rows"]:
        share = f"{drawn[row['task']] / sum(drawn.values()):.0%}" if row["task"] in drawn else "-"
        lines.append(f"| {row['task']}/{row['template']} | {share} | {row['metric']} | {row['single']:.3f} "
                     f"| {row['multi']:.3f} | {row['ratio']:.1%} | {'yes' if row['passes'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
