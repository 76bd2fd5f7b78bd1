"""Sequential training on tasks 1..T, and the forgetting / transfer matrix it leaves.

    instructune sequential configs/sequential-news.yaml

Top to bottom: every task's fixed test examples are scored on the original model (row 0); stage j
then trains task j, starting from the weights stage j-1 left (stage 1 from the configured model),
with the trainer in this process (its peak memory counted afresh from the memory in use). A PEFT stage's adapter
is merged into its base (`merged/`), and that full model is where the next stage starts. After
every stage all tasks are scored again on the same examples (row j). From the (T+1) x T matrix
come forgetting, backward and forward transfer (`instructune.forgetting.transfer_measures`), written
with each stage's cost to sequential.json and a table to sequential.md. Each stage's training and
each row's scores are reused on a rerun while their inputs (and starting weights) are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from instructune.adapters.merge import merge_adapter
from instructune.config import load_config, to_dict
from instructune.data.task import SplitSpec
from instructune.errors import InstructuneError, collect
from instructune.files import write_text_atomic
from instructune.forgetting.measures import task_scores, transfer_measures
from instructune.forgetting.suite import RetentionTask, fixed_examples
from instructune.hardware import eval_dtype, setup_threads
from instructune.methods import METHODS
from instructune.models import load_model
from instructune.runs import cached, deep_merge, train_run
from instructune.training.config import TrainConfig
from instructune.types import JSON, Log

if TYPE_CHECKING:
    from instructune.data.templates import Template


@dataclass
class SequentialConfig:
    train: dict
    """Training config shared by every stage (fields of `instructune train`); each stage sets its own
    `model` (where the previous stage ended), `output_dir`, `data.source` / `templates` /
    `template_file` and `eval_mode` (the task's `mode`)."""
    tasks: list[RetentionTask] = field(default_factory=list)
    """The tasks in training order; stage j trains task j. Every task is scored after every stage."""
    output_dir: Path = Path("runs/sequential")
    """Where each stage's run (`stage-<j>-<task>/`), the scores and sequential.json are written."""
    score_precision: Literal["auto", "fp32", "bf16"] | None = None
    """Precision of every score: auto (measured, as for training), fp32, or bf16 autocast; null = the
    training precision (fp16 training scores in fp32)."""
    seed: int = 0
    """Seed of the fixed test subsets."""


def sequential(cfg: SequentialConfig, log: Log = print) -> JSON:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = task_names(cfg.tasks)
    runs = stage_configs(cfg, out)  # every stage validated before any work starts
    setup_threads(runs[0].threads, log=log)
    examples = _fixed_examples(cfg, names, runs[0])
    dtype = eval_dtype(cfg.score_precision or runs[0].precision, runs[0].model, log=log)
    key = {"tasks": [to_dict(t) for t in cfg.tasks], "seed": cfg.seed, "dtype": dtype,
           "split": [runs[0].data.split.seed, runs[0].data.split.fractions]}

    rows = [cached(out / "scores" / "before.json", {**key, "model": runs[0].model},
                    lambda: _score(runs[0].model, examples, dtype, log), log)]
    stages, start = [], None
    for j, (name, run) in enumerate(zip(names, runs), 1):
        metrics = _train_stage(run, {"model": run.model, "weights": start}, f"stage {j} ({name})", log)
        start = _weights_id(run)  # names the weights stage j+1 starts from
        model = stage_model(run)
        rows.append(cached(out / "scores" / f"stage-{j}.json", {**key, "model": model, "weights": start},
                            lambda m=model: _score(m, examples, dtype, log), log))
        stages.append({"stage": j, "task": name, "start": run.model, "output_dir": str(run.output_dir),
                       **{k: metrics.get(k) for k in ("trainable_params", "trainable_pct", "wall_seconds",
                                                      "peak_memory_mb")},
                       "score_seconds": rows[-1].get("seconds")})
    return _write(out, cfg, names, rows, stages)


def task_names(tasks: list[RetentionTask]) -> list[str]:
    """`<source name>/<template>` per task: the matrix's columns."""
    return [f"{Path(t.source).stem}/{t.template}" for t in tasks]


def stage_model(run: TrainConfig) -> str:
    """The full model a stage leaves: its `model/`, or for PEFT methods its adapter merged into its base."""
    return str(Path(run.output_dir) / ("merged" if run.method.peft else "model"))


def stage_configs(cfg: SequentialConfig, out: Path) -> list[TrainConfig]:
    """One training config per stage: the shared `train` block on task j, starting where stage j-1 ends."""
    names = task_names(cfg.tasks)
    method = cfg.train.get("method")
    problems = []
    if not cfg.tasks:
        problems.append("tasks: is empty; list the tasks to train in order, e.g. "
                        "- {source: rotten-tomatoes, template: sentiment, mode: likelihood}")
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tasks: {', '.join(dupes)} listed more than once; each task is one stage and one column")
    if cfg.train.get("mixture"):
        problems.append("train.mixture: each stage trains on its own task from `tasks:`; remove the mixture")
    if isinstance(method, dict) and method.get("name") in METHODS and METHODS[method["name"]].prompt_learning:
        problems.append(f"train.method.name: {method['name']} adds virtual tokens that cannot be merged into the "
                        "weights, so the next stage has no model to start from; use lora, ia3 or full")
    collect(problems, "sequential config is invalid")
    runs, start = [], cfg.train.get("model")
    for j, (name, task) in enumerate(zip(names, cfg.tasks), 1):
        stage = {"output_dir": str(out / f"stage-{j}-{name.replace('/', '-')}"), "eval_mode": task.mode,
                 "data": {"source": task.source, "templates": [task.template], "template_file": task.template_file,
                          "test_limit": 0}}  # scored here, on the fixed examples
        try:
            shared = {"keep_checkpoints": 0, **cfg.train}  # an unfinished stage is trained again, never resumed
            run = load_config(TrainConfig, data=deep_merge(shared, {**stage, **({"model": start} if start else {})}))
        except InstructuneError as e:
            raise InstructuneError(f"stage {j} ({name}): {e}") from None
        runs.append(run)
        start = stage_model(run)
    return runs


def _fixed_examples(cfg: SequentialConfig, names: list[str],
                    run: TrainConfig) -> dict[str, tuple[list[dict], Template, str]]:
    """Each task's fixed test subset, template and scoring mode: the same examples in every row."""
    out, problems = {}, []
    split: SplitSpec = run.data.split  # the split a stage trains on, so the test split is held out
    for name, task in zip(names, cfg.tasks):
        recs, template = fixed_examples(task.task_spec(), task.template, split, task.limit, cfg.seed,
                                        held_out="test")  # the matrix reports; nothing chooses on it
        if not recs:
            problems.append(f"task {name}: its test split has no examples; give the source more rows or a larger "
                            "test fraction (train.data.fractions)")
        out[name] = (recs, template, task.mode)
    collect(problems, "sequential: tasks cannot be scored")
    return out


def _score(model_name: str, examples: dict[str, tuple[list[dict], Template, str]], dtype: str,
           log: Log) -> JSON:
    log(f"scoring {model_name} on every task")
    model, tok = load_model(model_name)
    out = {}
    for name, (recs, template, mode) in examples.items():
        metric, scores, _ = task_scores(model, tok, recs, template, mode, dtype=dtype)
        out[name] = {"metric": metric, "mean": sum(scores) / len(scores), "scores": scores}
    return {"tasks": out}


def _train_stage(run: TrainConfig, start: JSON, name: str, log: Log) -> JSON:
    """Train one stage (reused while its config and starting weights are unchanged);
    a PEFT stage's adapter is then merged into its base, the next stage's starting model."""
    folder = Path(run.output_dir)
    marker = folder / "start.json"  # the config names the starting folder, not what is in it
    if folder.exists() and (not marker.exists() or json.loads(marker.read_text()) != start):
        log(f"{name}: the weights it starts from changed since it was trained; training it again")
        shutil.rmtree(folder)
    metrics = train_run(run, folder.parent / f"{folder.name}.yaml", name, log, isolate=False)
    marker.write_text(json.dumps(start))
    if run.method.peft and not Path(stage_model(run)).exists():  # retraining removes it
        log(f"{name}: merging the adapter into {run.model}")
        merge_adapter(folder / "adapter", stage_model(run), base=run.model)
    return metrics


def _weights_id(run: TrainConfig) -> str:
    """Every training run writes a new metrics.json (its wall time differs), so its hash names the weights."""
    return hashlib.sha256((Path(run.output_dir) / "metrics.json").read_bytes()).hexdigest()[:16]


def _write(out: Path, cfg: SequentialConfig, names: list[str], rows: list[dict], stages: list[dict]) -> JSON:
    matrix = [[row["tasks"][n]["mean"] for n in names] for row in rows]  # R[j][i-1]: task i after stage j
    report = {"config": to_dict(cfg), "tasks": names, "metrics": {n: rows[0]["tasks"][n]["metric"] for n in names},
              "rows": ["before", *[f"after {n}" for n in names]], "matrix": matrix,
              "measures": transfer_measures(matrix), "stages": stages,
              "before_score_seconds": rows[0].get("seconds")}
    write_text_atomic(out / "sequential.json", json.dumps(report, indent=1))
    (out / "sequential.md").write_text(markdown_matrix(report))
    return report


def markdown_matrix(report: JSON) -> str:
    """Rows = before and after each stage; columns = tasks; then the measures."""
    names, m = report["tasks"], report["measures"]
    head = ["stage", *[f"{n} ({report['metrics'][n]})" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([label, *[f"{s:.3f}" for s in row]]) + " |"
              for label, row in zip(report["rows"], report["matrix"])]

    def signed(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    per_task = ", ".join(f"{n} {f:+.3f}" for n, f in zip(names, m["forgetting"]))
    return ("\n".join(lines) + f"\n\naverage forgetting {signed(m['average_forgetting'])}"
            + (f" ({per_task})" if per_task else "") + f" · BWT {signed(m['bwt'])} · FWT {signed(m['fwt'])}"
            + f" · final average {m['final_average']:.3f}\n\nforgetting = a task's best score after it was trained "
            "minus its final score (positive = forgot); BWT = mean final score minus the score just after "
            "training, over tasks 1..T-1; FWT = mean score on task i after stage i-1 minus before any training.\n")


def load_sequential_config(path: str, overrides: list[str]) -> SequentialConfig:
    return load_config(SequentialConfig, path, overrides)
