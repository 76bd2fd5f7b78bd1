"""Catastrophic forgetting, measured and cured side by side.

    instructune forgetting configs/forgetting-rotten-tomatoes.yaml

Top to bottom: the retention suite is scored on the original model; the target task is then
trained once per cure (plain full fine-tuning and plain LoRA always among them), each run in its
own process so its wall time and peak memory are its own; every tuned model is scored on the same
examples; the drops (bootstrap 95% intervals) and the target gain go to forgetting.json and a table.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from instructune.config import load_config, to_dict
from instructune.errors import InstructuneError
from instructune.hardware import setup_threads


@dataclass
class RetentionTask:
    source: str
    """Data pack (or file / dataset folder) of a task to keep."""
    template: str
    """Its template id."""
    mode: Literal["generate", "likelihood"] = "generate"
    """Classification scoring: generate an answer, or pick the most likely choice."""
    limit: int = 100
    """Test examples scored (the same ones before and after)."""
    template_file: str | None = None
    """User YAML templates, when `source` is a file rather than a pack."""


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
    probe_prompts: int = 48
    """General-behaviour probe: held-out general prompts (0 = off)."""
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


def forgetting(cfg: ForgettingConfig, log: Any = print) -> dict[str, Any]:
    from instructune.models import load_model

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cures = _cure_list(cfg)
    train_cfgs = {c.name: _train_config(cfg, c, out) for c in cures}  # validated before any work starts
    setup_threads(next(iter(train_cfgs.values())).threads, log=log)
    suite = RetentionSuite.build(cfg, next(iter(train_cfgs.values())), log)

    first = train_cfgs[cures[0].name]
    suite_key = {k: v for k, v in to_dict(cfg).items() if k not in ("cures", "baselines", "output_dir", "train",
                                                                  "isolate_runs")}
    suite_key.update(model=first.model, data=to_dict(first.data), dtype=suite.dtype)

    def score_original() -> dict[str, Any]:
        log(f"scoring the original model {first.model} on the retention suite")
        model, tok = load_model(first.model)
        return suite.score(model, tok, probe_answers=None)

    before = _cached(out / "scores" / "original.json", suite_key, score_original, log)
    rows = []
    for cure in cures:
        run = train_cfgs[cure.name]
        metrics = _train_cure_run(run, out / f"{cure.name}.yaml", cure.name, log, cfg.isolate_runs)

        def score_tuned(run: Any = run, name: str = cure.name) -> dict[str, Any]:
            log(f"cure '{name}': scoring")
            model, tok = _load_tuned(run)
            return suite.score(model, tok, probe_answers=before["probe_answers"])

        after = _cached(out / "scores" / f"{cure.name}.json", {**suite_key, "run": to_dict(run)}, score_tuned, log)
        rows.append(_compare(cure.name, before, after, metrics, cfg))
        _write(out, cfg, before, rows)  # a crash later keeps what is done
    return {"before": before, "cures": rows}


def _cached(path: Path, key: dict[str, Any], compute: Any, log: Any) -> dict[str, Any]:
    """Scores saved with the inputs that produced them; reused while the inputs are unchanged."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            log(f"reusing {path} (same inputs)")
            return saved["scores"]
    start = time.perf_counter()
    scores = {**compute(), "seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "scores": scores}))
    tmp.replace(path)
    return scores


def _cure_list(cfg: ForgettingConfig) -> list[CureConfig]:
    names = [c.name for c in cfg.cures]
    if len(set(names)) != len(names):
        raise InstructuneError(f"cure names must be unique, got {names}")
    extra = [CureConfig(n, over) for n, over in cfg.baselines.items() if n not in names]
    return extra + list(cfg.cures)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _train_config(cfg: ForgettingConfig, cure: CureConfig, out: Path) -> Any:
    from instructune.training.config import TrainConfig

    data = _merge(cfg.train, cure.train)
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


def _train_cure_run(run: Any, cfg_path: Path, name: str, log: Any, isolate: bool = True) -> dict[str, Any]:
    """Train in a fresh process, so its peak memory and time are the cure's own (or, not isolated, here)."""
    done = Path(run.output_dir) / "metrics.json"
    if done.exists() and yaml.safe_load((Path(run.output_dir) / "config.yaml").read_text()) == to_dict(run):
        log(f"reusing {done} (same config)")
        return json.loads(done.read_text())
    log(f"cure '{name}': training")
    if Path(run.output_dir).exists():
        import shutil
        shutil.rmtree(run.output_dir)
    cfg_path.write_text(yaml.safe_dump(to_dict(run), sort_keys=False))
    if not isolate:
        import gc

        from instructune.recipes.finetune import finetune
        from instructune.training.loop import reset_peak_memory

        gc.collect()
        reset_peak_memory()
        metrics = finetune(run, log=log).metrics  # the model is dropped here: scoring reloads the saved one
        gc.collect()
        return metrics
    proc = subprocess.run([sys.executable, "-m", "instructune", "train", str(cfg_path)], env=os.environ.copy())
    if proc.returncode != 0 or not done.exists():
        raise InstructuneError(f"training for {cfg_path.stem} failed (exit {proc.returncode}); its output is above "
                               f"and its config in {cfg_path}.")
    return json.loads(done.read_text())


def _load_tuned(run: Any) -> tuple[Any, Any]:
    from instructune.models import load_model

    folder = Path(run.output_dir)
    if (folder / "adapter").exists():
        return load_model(run.model, adapter=str(folder / "adapter"))
    return load_model(str(folder / "model"))


def _compare(name: str, before: dict, after: dict, metrics: dict, cfg: ForgettingConfig) -> dict[str, Any]:
    from instructune.forgetting import HIGHER_IS_BETTER, bootstrap_drop

    target_b, target_a = before["target"], after["target"]
    row = {"cure": name, "target_metric": target_b["metric"], "target_before": target_b["mean"],
           "target_after": target_a["mean"], "gain": target_a["mean"] - target_b["mean"], "retention": {},
           "trainable_params": metrics.get("trainable_params"), "trainable_pct": metrics.get("trainable_pct"),
           "wall_seconds": metrics.get("wall_seconds"), "score_seconds": after.get("seconds"),
           "peak_memory_mb": metrics.get("peak_memory_mb")}
    for key, b in before["measures"].items():
        a = after["measures"][key]
        stats = bootstrap_drop(b["scores"], a["scores"], HIGHER_IS_BETTER[b["metric"]], cfg.bootstrap_samples,
                               cfg.seed)
        row["retention"][key] = {"metric": b["metric"], "before": b["mean"], "after": a["mean"], **stats}
    return row


def _write(out: Path, cfg: ForgettingConfig, before: dict, rows: list[dict]) -> None:
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in before["measures"].items()}
    report = {"config": to_dict(cfg), "before": {"target": {k: v for k, v in before["target"].items()
                                                             if k != "scores"}, "measures": slim},
              "cures": rows, "original_score_seconds": before.get("seconds")}
    tmp = out / "forgetting.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "forgetting.json")
    (out / "forgetting.md").write_text(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    """Rows = cures; columns = target gain, each retention drop with its interval, cost."""
    if not rows:
        return ""
    keys = list(rows[0]["retention"])
    head = ["cure", f"target {rows[0]['target_metric']} (gain)", *[f"{k} drop [95% CI]" for k in keys],
            "trainable", "wall s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cure"], f"{r['target_after']:.3f} ({r['gain']:+.3f})"]
        cells += [f"{r['retention'][k]['drop']:+.3f} [{r['retention'][k]['low']:+.3f}, {r['retention'][k]['high']:+.3f}]"
                  for k in keys]
        cells += [f"{r['trainable_pct']:.2f}%" if r["trainable_pct"] is not None else "",
                  f"{r['wall_seconds']:.0f}" if r["wall_seconds"] else "",
                  f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\ndrop = before - after, positive = forgot (for cross-entropy measures: after - before).\n"


@dataclass
class RetentionSuite:
    """Fixed examples of the target and of every retention measure."""

    target: tuple[list[dict], Any, str]
    tasks: dict[str, tuple[list[dict], Any, str]]
    probe: list[str]
    texts: list[str]
    probe_tokens: int
    dtype: str = "float32"

    @classmethod
    def build(cls, cfg: ForgettingConfig, run: Any, log: Any = print) -> RetentionSuite:
        from instructune.data.build import dataset_folder
        from instructune.forgetting import probe_prompts
        from instructune.recipes.task_data import subset

        def fixed(source: str, template: str, limit: int, templates: list[str] | None = None,
                  template_file: str | None = None) -> tuple:
            from instructune.data.build import dataset_templates, read_split

            folder = dataset_folder(source, templates or [template], run.data.seed, run.data.fractions, template_file)
            recs = [r for r in read_split(folder, "test") if r["template"] == template]
            return subset(recs, limit, cfg.seed), dataset_templates(folder)[template]

        target_t = run.data.templates[0] if run.data.templates else None
        if not target_t:
            raise InstructuneError("forgetting: train.data.templates must name the target template")
        recs, t = fixed(run.data.source, target_t, cfg.target_limit, run.data.templates, run.data.template_file)
        target = (recs, t, "likelihood" if run.eval_mode == "likelihood" else "generate")
        tasks = {}
        for task in cfg.retention:
            limit = min(task.limit, cfg.retention_limit or task.limit)
            recs, t = fixed(task.source, task.template, limit, template_file=task.template_file)
            tasks[f"{task.source}/{task.template}"] = (recs, t, task.mode)
        from instructune.hardware import eval_dtype

        dtype = eval_dtype(cfg.score_precision or run.precision, run.model, log=log)
        return cls(target, tasks, probe_prompts(cfg.probe_prompts) if cfg.probe_prompts else [],
                   _held_out_texts(cfg, run) if cfg.text_source else [], cfg.probe_tokens, dtype)

    def score(self, model: Any, tok: Any, probe_answers: list[str] | None) -> dict[str, Any]:
        from instructune.forgetting import general_probe, task_scores, text_probe

        def pack(metric: str, scores: list[float], extra: dict | None = None) -> dict[str, Any]:
            return {"metric": metric, "scores": scores, "mean": sum(scores) / len(scores), **(extra or {})}

        recs, t, mode = self.target
        metric, scores, _ = task_scores(model, tok, recs, t, mode, dtype=self.dtype)
        out: dict[str, Any] = {"target": pack(metric, scores), "measures": {}, "probe_answers": probe_answers}
        for key, (recs, t, mode) in self.tasks.items():
            metric, scores, _ = task_scores(model, tok, recs, t, mode, dtype=self.dtype)
            out["measures"][key] = pack(metric, scores)
        if self.probe:
            answers, ce = general_probe(model, tok, self.probe, probe_answers, max_new_tokens=self.probe_tokens,
                                        dtype=self.dtype)
            out["probe_answers"] = answers
            out["measures"]["general-probe"] = pack("cross_entropy", ce)
        if self.texts:
            out["measures"]["text-perplexity"] = pack("cross_entropy", text_probe(model, tok, self.texts,
                                                                                   dtype=self.dtype))
        return out


def _held_out_texts(cfg: ForgettingConfig, run: Any) -> list[str]:
    """Plain texts of `text_source`: a pack's test-split rows (never trained on, replay included), or a
    file's rows (a seeded subset)."""
    from instructune.data.build import dataset_folder, read_split
    from instructune.data.packs import PACKS
    from instructune.data.sources import read_table
    from instructune.data.templates import load_templates
    from instructune.recipes.task_data import subset

    source = cfg.text_source
    table = read_table(source)
    keep = set(table.ids)
    if source in PACKS:
        folder = dataset_folder(source, [next(iter(load_templates(source)))], run.data.seed, run.data.fractions, None)
        keep = {r["id"].rsplit("/", 1)[0] for r in read_split(folder, "test")}
    name = table.text_field or "text"
    texts = [" ".join(str(r[name]).split()[:cfg.text_words]) for r, i in zip(table.rows, table.ids)
             if i in keep and r.get(name)]
    if not texts:
        raise InstructuneError(f"text_source {source} has no '{name}' texts for the perplexity probe; point "
                               "text_source at a pack or a file with a `text` column, or set it to null.")
    return subset(texts, cfg.text_limit, cfg.seed)


def load_forgetting_config(path: str, overrides: list[str]) -> ForgettingConfig:
    return load_config(ForgettingConfig, path, overrides)


