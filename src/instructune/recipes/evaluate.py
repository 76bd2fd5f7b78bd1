"""Evaluate models, adapters and in-context settings side by side on the same examples.

    instructune eval --model smollm2-135m-instruct --data rotten-tomatoes --template sentiment --shots 0,1,5

Every (model or adapter) x shots setting sees the same seeded subset of the split. Writes
`eval.json` (metrics, settings, timings, per-example predictions) and `predictions.csv`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instructune.adapters.attach import attach_adapter
from instructune.adapters.registry import adapters_root, resolve_adapter
from instructune.data.task import dataset, load_split
from instructune.data.task import templates as task_templates
from instructune.errors import InstructuneError, collect
from instructune.evaluation.evaluate import evaluate_records
from instructune.evaluation.settings import EvalSettings
from instructune.files import write_text_atomic
from instructune.hardware import eval_dtype
from instructune.metrics import HEADLINE
from instructune.models import load_model
from instructune.tables import show

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def evaluate(models: list[str], adapters: list[str], settings: EvalSettings, out: Path | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every model (and every adapter on the first model) with every shot count on the same
    `limit` examples (seeded by `seed`) of the held-out split of the task.

    The rows are split as a run with the same task and split split them (`settings.task` carries the
    templates its dataset was built with, since they decide the stratifying label), so the test rows
    are the ones that run held out. Without a template, the dataset's only one (a data format's, like
    `alpaca`) is scored."""
    collect(settings.problems(), "invalid evaluation settings")
    folders = [resolve_adapter(a) for a in adapters]  # a name, a folder or a run: a typo fails at once
    # --- data and template
    task, cut, split, template = settings.task, settings.split, settings.held_out, settings.template
    folder = dataset(task, cut)
    templates = task_templates(task, cut)
    if template is None:
        if len(templates) > 1:
            raise InstructuneError(f"{task.source} has several templates ({', '.join(templates)}); choose one with "
                                   "--template.")
        template = next(iter(templates))
    if template not in templates:
        raise InstructuneError(f"template '{template}' is not in the dataset {folder}; its templates: "
                               f"{', '.join(templates)}.")
    t = templates[template]
    records = load_split(task, cut, split, template)
    if not records:
        raise InstructuneError(f"the {split} split of {task.source} has no '{template}' examples; check --split.")
    train = load_split(task, cut, "train", template) if max(settings.shots) > 0 else None
    tokens = settings.max_new_tokens or (8 if t.choices else 64)
    dtype = eval_dtype(settings.dtype, models[0], log=log)  # auto: measured on this machine

    # --- every setting on the same examples
    results = []
    limit, mode = settings.limit, settings.mode
    for label, model, tok in _settings(models, folders):
        for k in settings.shots:
            log(f"evaluating {label}, {k}-shot, {min(limit or len(records), len(records))} examples")
            res = evaluate_records(model(), tok, records, task=t.task, choices=t.choices, metrics=t.metrics,
                                   stop=t.stop, mode=mode if t.choices else "generate", shots=k,
                                   train_records=train, limit=limit, seed=settings.seed,
                                   batch_size=settings.batch_size, max_new_tokens=tokens, dtype=dtype)
            results.append({"setting": label, "shots": k, **res})
    report = {"data": task.source, "dataset": str(folder), "template": template, "split": split,
              "seed": settings.seed, "data_seed": cut.seed, "fractions": list(cut.fractions), "mode": mode,
              "dtype": dtype, "results": results}
    if out:
        write_outputs(Path(out), report)
    return report


def _settings(models: list[str], adapters: list[Path]) -> Iterator[tuple[str, Callable[[], PreTrainedModel],
                                                                     PreTrainedTokenizerBase]]:
    """(label, model getter, tokenizer) per model, then per adapter folder on the first model (base loaded
    once)."""
    for i, name in enumerate(models):
        model, tok = load_model(name)
        if i > 0 or not adapters:
            yield name, (lambda m=model: m), tok
            continue
        for j, folder in enumerate(adapters):
            if j == 0:
                model = attach_adapter(model, str(folder), name=f"a{j}")
            else:
                model.load_adapter(str(folder), adapter_name=f"a{j}")
        with model.disable_adapter():  # the base itself, no second copy in memory
            yield name, (lambda m=model: m), tok
        for j, folder in enumerate(adapters):
            model.set_adapter(f"a{j}")
            yield f"{name} + {_adapter_label(folder)}", (lambda m=model: m), tok


def _adapter_label(folder: Path) -> str:
    """A registered adapter by its name; a folder by its last two parts (`lora/adapter`)."""
    return folder.name if folder.parent == adapters_root() else f"{folder.parent.name}/{folder.name}"


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in HEADLINE if isinstance(metrics.get(k), (int, float))}


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(report, indent=1))
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["setting", "shots", "id", "reference", "prediction", "label", "predicted_label", "correct"])
        for res in report["results"]:
            for p in res["predictions"]:
                w.writerow([res["setting"], res["shots"], p["id"], p["reference"], p["prediction"], p.get("label", ""),
                            p.get("predicted_label", ""), p.get("correct", "")])


def print_table(report: dict[str, Any]) -> None:
    """The headline scores of every setting (settings are never cut: their names are copied into commands)."""
    rows = [(r["setting"], r["shots"], headline(r["metrics"]), r["timings"]["examples_per_s"])
            for r in report["results"]]
    keys = list(dict.fromkeys(k for _, _, h, _ in rows for k in h))
    show(f"{report['data']} / {report['template']} / {report['split']} "
         f"({report['results'][0]['settings']['n']} examples, {report['mode']})", ["setting", "shots", *keys,
                                                                                  "examples/s"],
         [(setting, k, *[f"{h[c]:.3f}" if c in h else "" for c in keys], f"{speed:.1f}")
          for setting, k, h, speed in rows], ids=("setting",))
