"""A run folder: its config (refused on resume when it changed) and its result (an adapter or a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from instructune.errors import InstructuneError
from instructune.training import checkpoint as ckpt


def prepare(run_dir: Path, config: dict[str, Any], resume: bool, main: bool) -> None:
    """Write config.yaml; on resume, refuse a changed config and name the fields that differ."""
    saved = run_dir / "config.yaml"
    if resume and saved.exists():
        before = yaml.safe_load(saved.read_text())
        diff = sorted(differences(before, config))
        if diff:
            raise InstructuneError(f"--resume with a changed config: {', '.join(diff)} differ from {saved}. "
                                   "Resume with the same config, or train into a new output_dir.")
    elif not resume and (run_dir / "train_log.jsonl").exists():
        raise InstructuneError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                               "output_dir (output_dir=runs/NAME).")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")  # a kill mid-write must not leave a config that --resume cannot read
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(saved)


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """`field (old -> new)` for every leaf that differs between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} ({a!r} -> {b!r})"]


def save_output(model: Any, tok: Any, run_dir: Path, peft: bool) -> Path:
    """An adapter loadable by peft.PeftModel.from_pretrained, or a full model for transformers.

    Every process calls it and rank 0 writes; FSDP2-sharded weights are gathered to it first."""
    out = run_dir / ("adapter" if peft else "model")
    state = ckpt.full_state(model) if ckpt.sharded(model) else None  # a collective: before the rank test
    if ckpt.rank() == 0:
        model.save_pretrained(out, state_dict=state)
        tok.save_pretrained(out)
    return out
