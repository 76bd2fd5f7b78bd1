"""The main job: the whole story of instruction fine-tuning on a real model and real data.

    instructune demo            # tens of minutes on a 2-core CPU
    instructune demo --quick    # a small smoke run of every step

Top to bottom: pull the model, evaluate the base model zero- and few-shot on the target task,
fine-tune with full fine-tuning, LoRA and a forgetting cure while measuring what each forgot on
the retention tasks, evaluate the tuned models on the same examples, record provenance, and
write a report. A second run reuses every result whose inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

from instructune.config import load_config, to_dict
from instructune.data.packs import PACKS
from instructune.data.task import TaskSpec, dataset
from instructune.data.templates import load_templates
from instructune.hardware import cpu_model, resolve_precision, setup_threads, shapes_of
from instructune.models import MODEL_PACKS, pull_model, resolve_model
from instructune.recipes.evaluate import evaluate, print_table, write_outputs
from instructune.recipes.forgetting import ForgettingConfig, forgetting, markdown_table, run_configs
from instructune.report import build_report


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
    eval_limit: int = 200
    """Target test examples in the side-by-side evaluation."""
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


def demo(config: str | None = None, overrides: list[str] = (), quick: bool = False, log: Any = print) -> Path:
    # --- config (quick mode shrinks every step, into its own folder)
    extra = ([*QUICK, "output_dir=runs/demo-quick"] if quick else []) + list(overrides)
    cfg = load_config(DemoConfig, config or default_config_path(), extra)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fcfg_data = {**cfg.forgetting, "output_dir": str(out / "forgetting"), "seed": cfg.seed}
    fcfg_data["train"] = {"threads": cfg.threads, **fcfg_data.get("train", {}), "model": cfg.model, "seed": cfg.seed}
    fcfg = load_config(ForgettingConfig, data=fcfg_data)

    # --- model, and what this machine runs fastest
    log(f"[1/5] model {cfg.model}")
    if cfg.model in MODEL_PACKS:
        pull_model(cfg.model, log=log)
    threads = setup_threads(cfg.threads, log=log)
    choice = resolve_precision(cfg.precision, shapes_of(cfg.model), log=log)
    dtype = choice.dtype

    # --- base model, zero- and few-shot, on the target task
    log(f"[2/5] base model on {cfg.target}/{cfg.template}: {', '.join(map(str, cfg.shots))}-shot")
    base_eval = _cached_eval(out / "eval-base", dict(models=[cfg.model], adapters=[], data=cfg.target,
                             template=cfg.template, shots=cfg.shots, limit=cfg.eval_limit, mode=cfg.eval_mode,
                             seed=cfg.seed, dtype=dtype), log)

    # --- fine-tune: full, LoRA and the cures; retention before and after
    log("[3/5] fine-tuning and forgetting: " + ", ".join(["full", "lora", *[c.name for c in fcfg.cures]]))
    result = forgetting(fcfg, log=log)
    log(markdown_table(result["cures"]))

    # --- the tuned models on the same target examples as the base
    log("[4/5] tuned models on the target task")
    runs = Path(fcfg.output_dir)
    tuned = [str(runs / c / "model") for c in _cure_names(fcfg) if (runs / c / "model").exists()]
    adapters = [str(runs / c / "adapter") for c in _cure_names(fcfg) if (runs / c / "adapter").exists()]
    tuned_eval = _cached_eval(out / "eval-tuned", dict(models=[cfg.model, *tuned], adapters=adapters,
                              data=cfg.target, template=cfg.template, shots=[0], limit=cfg.eval_limit,
                              mode=cfg.eval_mode, seed=cfg.seed, dtype=dtype), log)  # base 0-shot kept: answers side by side
    tuned_rows = [r for r in tuned_eval["results"] if r["setting"] != cfg.model]
    print_table({**base_eval, "results": base_eval["results"] + tuned_rows})

    # --- provenance and report
    log("[5/5] report")
    machine = {"cpu": cpu_model(), "cpu_class": choice.cpu_class, "threads": threads, "precision": choice.as_dict()}
    write_run_info(out, cfg, resolve_model(cfg.model), [base_eval["dataset"]] + _study_folders(fcfg), machine)
    paths = build_report([out], out / "report")
    log(f"report: {paths['html']}")
    return paths["html"]


def _cure_names(fcfg: ForgettingConfig) -> list[str]:
    return list(run_configs(fcfg))


def _cached_eval(folder: Path, settings: dict[str, Any], log: Any) -> dict[str, Any]:
    """Run (or reuse) an evaluation."""
    key = json.loads(json.dumps(settings))
    saved = folder / "eval.json"
    if saved.exists():
        report = json.loads(saved.read_text())
        if report.get("key") == key:
            log(f"reusing {saved} (same inputs)")
            return report
    report = evaluate(**settings, out=None, log=log)
    report["key"] = key
    write_outputs(folder, report)
    return report


def _study_folders(fcfg: ForgettingConfig) -> list[str]:
    """The dataset folders the forgetting study read: its training data, each retention task, the text probe."""
    run = next(iter(run_configs(fcfg).values()))
    split = run.data.split_spec()
    tasks = [run.data.task_spec(), *[t.task_spec() for t in fcfg.retention]]
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
