"""The main job: the whole story of instruction fine-tuning on a real model and real data.

    instructune demo            # tens of minutes on a 2-core CPU
    instructune demo --quick    # a small smoke run of every step

Top to bottom: pull the model; fine-tune with full fine-tuning, LoRA and a forgetting cure while
measuring what each forgot on the retention tasks and gained on the target task's test reviews;
score the base model few-shot on those same reviews; lay the base and tuned models side by side
(the zero-shot rows are the study's own scores: one set of reviews, each model scored once); record
provenance, write a report and the result file (`results/demo_<class>.json`, what the README's demo
tables are rendered from). A second run reuses every result whose inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

from instructune.config import load_config, to_dict
from instructune.data.packs import PACKS
from instructune.data.task import TaskSpec, dataset
from instructune.data.templates import load_templates
from instructune.evaluation.settings import EvalSettings
from instructune.hardware import cpu_model, machine_summary, resolve_precision, setup_threads, shapes_of
from instructune.models import MODEL_PACKS, pack_dir, pull_model, resolve_model
from instructune.recipes.evaluate import evaluate, print_table, write_outputs
from instructune.recipes.forgetting import (
    ForgettingConfig,
    drop_cell,
    forgetting,
    markdown_table,
    run_configs,
)
from instructune.report import build_report
from instructune.results import machine_line, render_table, table, write_results
from instructune.search.curve import bootstrap_interval


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    """Model pack, folder or hub id."""
    output_dir: Path = Path("runs/demo")
    """Where every step writes; the report lands in output_dir/report."""
    target: str = "rotten-tomatoes"
    """Data pack of the task to learn."""
    template: str = "sentiment"
    """Its template."""
    shots: list[int] = field(default_factory=lambda: [0, 1, 5])
    """In-context settings of the base model."""
    eval_limit: int = 300
    """Target test reviews every model is scored on, the same in the forgetting study and the side-by-side
    evaluation (300 keeps a 95% interval of an accuracy within about +-0.06)."""
    eval_mode: Literal["generate", "likelihood"] = "generate"
    """How the side-by-side evaluation scores classification: generate an answer (a base model's answers
    can run to max_new_tokens), or pick the most likely label (one forward pass per label)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the base and tuned evaluations: auto (measured on this machine, see `instructune
    doctor`), fp32, or bf16 autocast (faster on CPUs with bf16 units, much slower on those without)."""
    threads: int | None = None
    """torch threads of every step; null = the CPUs this process may run on."""
    forgetting: dict = field(default_factory=dict)
    """The forgetting comparison (fields of `instructune forgetting`); its train block trains the target."""
    seed: int = 0
    """Seed of everything."""


QUICK = ["eval_limit=16", "shots=[0,1]", "forgetting.train.max_steps=2", "forgetting.train.batch_size=4", "forgetting.train.data.train_limit=32",
         "forgetting.train.data.val_limit=8", "forgetting.train.eval_every=0", "forgetting.train.retention_every=1", "forgetting.target_limit=8",
         "forgetting.probe_prompts=4", "forgetting.probe_tokens=16", "forgetting.text_limit=2",
         "forgetting.retention_limit=4", "forgetting.bootstrap_samples=200",
         "forgetting.isolate_runs=false"]  # a smoke run: the few seconds of a fresh process per cure count


def default_config_path() -> Path:
    return Path(str(resources.files("instructune").joinpath("configs/demo.yaml")))


def demo(config: str | None = None, overrides: list[str] = (), quick: bool = False,
         log: Callable[[str], None] = print) -> Path:
    started = time.perf_counter()
    # --- config (quick mode shrinks every step, into its own folder)
    extra = ([*QUICK, "output_dir=runs/demo-quick"] if quick else []) + list(overrides)
    cfg = load_config(DemoConfig, config or default_config_path(), extra)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fcfg_data = {**cfg.forgetting, "output_dir": str(out / "forgetting"), "seed": cfg.seed,
                 "target_limit": cfg.eval_limit}  # the study scores the very reviews of the evaluation
    fcfg_data["train"] = {"threads": cfg.threads, **fcfg_data.get("train", {}), "model": cfg.model, "seed": cfg.seed}
    fcfg = load_config(ForgettingConfig, data=fcfg_data)
    phases: dict[str, float] = {}

    # --- model, and what this machine runs fastest
    log(f"[1/5] model {cfg.model}")
    pulled = cfg.model in MODEL_PACKS and not pack_dir(cfg.model).exists()
    if cfg.model in MODEL_PACKS:
        pull_model(cfg.model, log=log)
    threads = setup_threads(cfg.threads, log=log)
    choice = resolve_precision(cfg.precision, shapes_of(cfg.model), log=log)
    phases["model"] = time.perf_counter() - started

    # --- fine-tune: full, LoRA and the cures; retention and the target task before and after
    log("[2/5] fine-tuning and forgetting: " + ", ".join(["full", "lora", *[c.name for c in fcfg.cures]]))
    result = forgetting(fcfg, log=log)
    log(markdown_table(result["cures"]))
    phases["forgetting study"] = time.perf_counter() - started - sum(phases.values())

    # --- the base model with in-context examples, on the same reviews the study scored
    few = [k for k in cfg.shots if k > 0]
    log(f"[3/5] base model on {cfg.target}/{cfg.template}: {', '.join(map(str, few)) or 'no'}-shot")
    few_eval = _cached_eval(out / "eval-few-shot", [cfg.model], EvalSettings(
        TaskSpec(cfg.target, [cfg.template]), template=cfg.template, shots=few, limit=cfg.eval_limit,
        mode=cfg.eval_mode, seed=cfg.seed, dtype=choice.dtype), log) if few else None
    phases["few-shot evaluation"] = time.perf_counter() - started - sum(phases.values())

    # --- side by side: base zero- and few-shot, then the tuned models, on one set of reviews
    log("[4/5] base and tuned models side by side")
    base_eval, tuned_eval = study_evaluations(cfg, fcfg, result, few_eval)
    write_outputs(out / "eval-base", base_eval)
    write_outputs(out / "eval-tuned", tuned_eval)
    print_table({**base_eval, "results": base_eval["results"] + tuned_eval["results"][1:]})

    # --- provenance, report and the result file
    log("[5/5] report")
    machine = {"cpu": cpu_model(), "cpu_class": choice.cpu_class, "threads": threads, "precision": choice.as_dict()}
    write_run_info(out, cfg, resolve_model(cfg.model), [base_eval["dataset"]] + _study_folders(fcfg), machine)
    paths = build_report([out], out / "report")
    log(f"report: {paths['html']}")
    phases["report"] = time.perf_counter() - started - sum(phases.values())
    md = write_demo_result(out / "results", cfg, result, base_eval, tuned_eval, phases, pulled, overrides, quick)
    log(f"result file: {md.with_suffix('.json')}")
    return paths["html"]


def study_evaluations(cfg: DemoConfig, fcfg: ForgettingConfig, study: dict[str, Any],
                      few_eval: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """eval.json reports of the base model (0-shot from the study's own scoring of the original, then
    few-shot) and of the tuned models (the study's scoring after each run): one set of reviews, scored once."""
    def row(setting: str, scores: dict[str, Any]) -> dict[str, Any]:
        return {"setting": setting, "shots": 0, **scores["target"]["evaluation"]}

    original, runs = study["before"], Path(fcfg.output_dir)
    head = {"data": cfg.target, "dataset": str(_study_folders(fcfg)[0]), "template": cfg.template, "split": "test",
            "seed": cfg.seed, "mode": cfg.eval_mode, "dtype": original["target"]["evaluation"]["settings"]["dtype"]}
    base = {**head, "results": [row(cfg.model, original), *(few_eval["results"] if few_eval else [])]}
    tuned = [row(cfg.model, original)]  # the base kept beside them: answers side by side
    for name, scores in study["after"].items():
        adapter = runs / name / "adapter"
        label = f"{cfg.model} + {name}/adapter" if adapter.exists() else str(runs / name / "model")
        tuned.append(row(label, scores))
    return base, {**head, "results": tuned}


# --- the result file: what the README's demo tables are rendered from


def write_demo_result(folder: Path, cfg: DemoConfig, study: dict[str, Any], base_eval: dict[str, Any],
                      tuned_eval: dict[str, Any], phases: dict[str, float], pulled: bool, overrides: list[str],
                      quick: bool) -> Path:
    """`results/demo_<class>.json`: wall time, peak memory, each method's gain and drops, the side-by-side
    evaluation with 95% intervals, the first headline answers; with the command, config, commit and machine."""
    wall = sum(phases.values())
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    machine = machine_summary(shapes_of(cfg.model))
    timing = table(["CPU class", "`precision: auto` picked", "wall time", "peak RSS", "model and data"],
                   [[machine_line({"machine": machine}), machine["auto_precision"], _minutes(wall), f"{peak_mb / 1024:.1f} GB",
                     "pulled into an empty cache" if pulled else "already cached"]], "llrrl")
    result = {"machine": machine, "wall_seconds": wall, "phases": phases, "peak_rss_mb": peak_mb,
              "empty_cache": pulled, "cures": study["cures"],
              "evaluation": [{k: r[k] for k in ("setting", "shots", "metrics")} | {"n": r["settings"]["n"]}
                             for r in base_eval["results"] + tuned_eval["results"][1:]],
              "tables": {"timing": timing, "phases": table(["phase", "seconds"], [[k, f"{v:.0f}"] for k, v in phases.items()], "lr"),
                         "methods": _methods_table(study["cures"], base_eval["results"][0]["settings"]["n"]),
                         "evaluation": _evaluation_table(base_eval["results"] + tuned_eval["results"][1:]),
                         "answers": _answers_table(study["answers"])}}
    command = "instructune demo" + (" --quick" if quick else "") + "".join(f" {o}" for o in overrides)
    lines = [f"# The demo ({machine_line({'machine': machine})})", ""]
    for name, t in result["tables"].items():
        lines += [f"**{name}**", "", render_table({"tables": {name: t}}, name), ""]
    return write_results(folder, "demo-quick" if quick else "demo", result, "\n".join(lines), command, to_dict(cfg),
                         markdown_tables=False)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _interval(mean: float, n: int) -> str:
    low, high = bootstrap_interval(mean, n)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _methods_table(cures: list[dict[str, Any]], n: int) -> dict[str, Any]:
    keys = list(cures[0]["retention"]) if cures else []
    rows = [[c["cure"], f"{_interval(c['target_after'], n)} ({c['gain']:+.3f})",
             *[drop_cell(c["retention"][k]) for k in keys],
             f"{c['mean_relative_drop']:+.1%}" if isinstance(c.get("mean_relative_drop"), (int, float)) else "",
             f"{c['wall_seconds']:.0f}" if c.get("wall_seconds") else "",
             f"{c['peak_memory_mb']:.0f}" if c.get("peak_memory_mb") else ""] for c in cures]
    return table(["method", "target accuracy [95% CI] (gain)", *[f"{k} drop [95% CI]" for k in keys],
                  "mean relative drop", "train wall s", "peak MB"], rows, "l" + "r" * (len(keys) + 4))


def _evaluation_table(results: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [[r["setting"], str(r["shots"]), _interval(r["metrics"]["accuracy"], r["settings"]["n"]),
             f"{r['metrics']['f1']:.3f}" if isinstance(r["metrics"].get("f1"), (int, float)) else "", str(r["settings"]["n"])]
            for r in results]
    return table(["setting", "shots", "accuracy [95% CI]", "macro F1", "reviews"], rows, "lrrrr")


def _answers_table(answers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = next(iter(answers.values()), [])
    names = list(rows[0]["answers"]) if rows else ["original"]
    clip = lambda text: " ".join(str(text).split())[:90].replace("|", "\\|")  # noqa: E731
    return table(["reference", *[f"{n} model" if n == "original" else n for n in names]],
                 [[clip(r["reference"]), *[clip(r["answers"].get(n, "")) for n in names]] for r in rows])


def _cure_names(fcfg: ForgettingConfig) -> list[str]:
    return list(run_configs(fcfg))


def _cached_eval(folder: Path, models: list[str], settings: EvalSettings,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Run (or reuse) an evaluation of `models` (no adapters)."""
    key = json.loads(json.dumps({"models": models, "adapters": [], **asdict(settings)}))
    saved = folder / "eval.json"
    if saved.exists():
        report = json.loads(saved.read_text())
        if report.get("key") == key:
            log(f"reusing {saved} (same inputs)")
            return report
    report = evaluate(models, [], settings, log=log)
    report["key"] = key
    write_outputs(folder, report)
    return report


def _study_folders(fcfg: ForgettingConfig) -> list[str]:
    """The dataset folders the forgetting study read: its training data, each retention task, the text probe."""
    run = next(iter(run_configs(fcfg).values()))
    split = run.data.split
    tasks = [run.data.task, *[t.task_spec() for t in fcfg.retention]]
    if fcfg.text_source in PACKS:
        tasks.append(TaskSpec(fcfg.text_source, [next(iter(load_templates(fcfg.text_source)))]))
    return list(dict.fromkeys(str(dataset(t, split)) for t in tasks))


def write_run_info(out: Path, cfg: DemoConfig, model_dir: str, data_folders: list[str],
                   machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced the run: config, seed, machine and precision, package versions, model checksum,
    data split hashes."""
    manifest = Path(model_dir) / "instructune-pack.json"
    packages = ["instructune", "torch", "transformers", "peft", "accelerate", "datasets", "rouge-score", "sacrebleu"]
    info = {
        "config": to_dict(cfg), "seed": cfg.seed, "python": platform.python_version(),
        "platform": platform.platform(), "machine": machine,
        "packages": {p: _version(p) for p in packages},
        "model": {"name": cfg.model, "path": model_dir, **_model_checksums(Path(model_dir), manifest)},
        "data": {f: {s: _sha256(Path(f) / f"{s}.jsonl") for s in ("train", "validation", "test")}
                 for f in data_folders},
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=1))
    return info


def _model_checksums(folder: Path, manifest: Path) -> dict[str, Any]:
    """A pack's manifest (checksums of its converted files), else the sha256 of a local folder's files."""
    if manifest.exists():
        return json.loads(manifest.read_text())
    if folder.is_dir():
        return {"files": {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}}
    return {}  # a hub id: no local files to hash


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
