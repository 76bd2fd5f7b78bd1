"""Helpers for studies made of many training runs (forgetting cures, sequential stages): train a run
unless the same config already finished, load what it left, and keep scores with the inputs that
produced them so a rerun reuses them."""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from instructune.adapters.attach import load_adapted
from instructune.config import to_dict
from instructune.errors import InstructuneError
from instructune.files import write_text_atomic
from instructune.models import load_model
from instructune.progress import say
from instructune.training.config import TrainConfig
from instructune.training.setup import reset_peak_memory
from instructune.training.trainer import train
from instructune.types import JSON, Log, Model, Tokenizer


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid on top, nested mappings merged key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def cached(path: Path, key: JSON, compute: Callable[[], JSON], log: Log) -> JSON:
    """Scores saved with the inputs that produced them; reused while the inputs are unchanged."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            log(f"reusing {path} (same inputs)")
            return saved["scores"]
    start = time.perf_counter()
    scores = {**compute(), "seconds": time.perf_counter() - start}
    write_text_atomic(path, json.dumps({"key": key, "scores": scores}))  # makes the folder too
    return scores


def train_run(run: TrainConfig, cfg_path: Path, label: str, log: Callable[[str], object],
              isolate: bool = True) -> JSON:
    """Train `run` with the trainer (`training.trainer.train`); returns its metrics.json.

    A finished run of the same config is reused; an unfinished one is trained again from scratch.
    Isolated, the trainer runs in a fresh process, so the run's peak memory and time are its own (a
    study compares them side by side); otherwise in this one (a few seconds quicker; peak memory then
    counts from the memory in use). `cfg_path` keeps the config as YAML beside the run."""
    folder = Path(run.output_dir)
    done = folder / "metrics.json"
    if done.exists() and yaml.safe_load((folder / "config.yaml").read_text()) == to_dict(run):
        log(f"reusing {done} (same config)")
        return json.loads(done.read_text())
    log(f"{label}: training")
    if folder.exists():
        shutil.rmtree(folder)
    write_text_atomic(cfg_path, yaml.safe_dump(to_dict(run), sort_keys=False))
    if isolate:
        child = multiprocessing.get_context("spawn").Process(target=train_isolated, args=(run,))
        child.start()
        child.join()
        code = child.exitcode
    else:
        gc.collect()
        reset_peak_memory()
        code = 0 if train(run, log=log).finished else 1  # the model is dropped on return: scoring reloads it
        gc.collect()
    if code != 0 or not done.exists():
        raise InstructuneError(f"training for {label} failed (exit {code}); its output is above and its config in "
                               f"{cfg_path}.")
    return json.loads(done.read_text())


def train_isolated(run: TrainConfig) -> None:
    """The trainer in a process of its own (`train_run(isolate=True)`): exit 2 with the error's paragraph on a
    problem the user can fix, as the command line does."""
    try:
        train(run, log=say)
    except InstructuneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def load_trained(run: TrainConfig) -> tuple[Model, Tokenizer]:
    """(model, tokenizer) a finished run left: its adapter on its base, or its full model."""
    folder = Path(run.output_dir)
    if (folder / "adapter").exists():
        return load_adapted(run.model, folder / "adapter")
    return load_model(str(folder / "model"))
