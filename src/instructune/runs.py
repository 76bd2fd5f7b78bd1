"""Helpers for studies made of many training runs (forgetting cures, sequential stages): train a run
unless the same config already finished, load what it left, and keep scores with the inputs that
produced them so a rerun reuses them."""

from __future__ import annotations

import copy
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from instructune import cli
from instructune.config import to_dict
from instructune.errors import InstructuneError
from instructune.models import load_model
from instructune.training.setup import reset_peak_memory


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid on top, nested mappings merged key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def cached(path: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]], log: Any) -> dict[str, Any]:
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


def train_run(run: Any, cfg_path: Path, label: str, log: Any, isolate: bool = True) -> dict[str, Any]:
    """Train `run` (a TrainConfig) with `instructune train`; returns its metrics.json.

    A finished run of the same config is reused; an unfinished one is trained again from scratch.
    Isolated, it trains in a fresh process, so its peak memory and time are its own; otherwise in
    this one (saving a few seconds of start-up; peak memory then counts from the memory in use)."""
    folder = Path(run.output_dir)
    done = folder / "metrics.json"
    if done.exists() and yaml.safe_load((folder / "config.yaml").read_text()) == to_dict(run):
        log(f"reusing {done} (same config)")
        return json.loads(done.read_text())
    log(f"{label}: training")
    if folder.exists():
        shutil.rmtree(folder)
    cfg_path.write_text(yaml.safe_dump(to_dict(run), sort_keys=False))
    if isolate:
        code = subprocess.run([sys.executable, "-m", "instructune", "train", str(cfg_path)],
                              env=os.environ.copy()).returncode
    else:
        gc.collect()
        reset_peak_memory()
        code = cli.main(["train", str(cfg_path)])  # the model is dropped on return: scoring reloads the saved one
        gc.collect()
    if code != 0 or not done.exists():
        raise InstructuneError(f"training for {label} failed (exit {code}); its output is above and its config in "
                               f"{cfg_path}.")
    return json.loads(done.read_text())


def load_trained(run: Any) -> tuple[Any, Any]:
    """(model, tokenizer) a finished run left: its adapter on its base, or its full model."""
    folder = Path(run.output_dir)
    if (folder / "adapter").exists():
        return load_model(run.model, adapter=str(folder / "adapter"))
    return load_model(str(folder / "model"))
