"""A run folder: marked as one when created, locked while a run writes to it, its config refused on
resume when it changed, and its result (an adapter or a model).

A run only ever deletes what it wrote itself, recognised by exact name (`RUN_ENTRIES`,
`checkpoint-NNNNNNNN`, `.tmp-...` of its own writes): a folder holding anything else and no
marker is refused unless `--overwrite`, and even then nothing of the user's is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from safetensors import SafetensorError

from instructune.errors import InstructuneError
from instructune.files import write_text_atomic
from instructune.training import checkpoint as ckpt
from instructune.types import JSON, Model, Tokenizer

MARKER = ".instructune-run"
"""Written when a run folder is created: what makes a folder a run's."""
LOCK = ".instructune-run.lock"
RUN_ENTRIES = {"config.yaml", "config.tmp", "train_log.jsonl", "metrics.json", "data_inspect.json",
               "tensorboard", "best", "adapter",
               "model", MARKER, LOCK, f"{LOCK}.owner"}
"""Everything a run writes at the top of its folder, besides checkpoints and temporary folders."""
OWN = re.compile(rf"({ckpt.PREFIX}\d{{8}}|\.tmp-{ckpt.PREFIX}\d{{8}}|\.tmp-pruned-{ckpt.PREFIX}\d{{8}}|\.tmp-best"
                 r"|\.(config\.yaml|metrics\.json|data_inspect\.json)\.\w{8})")  # the last: files.write_atomic's temp files


def is_own(name: str) -> bool:
    """Whether a top-level entry of a run folder is one the run writes."""
    return name in RUN_ENTRIES or OWN.fullmatch(name) is not None


def prepare(run_dir: Path, config: JSON, resume: bool, main: bool, overwrite: bool = False) -> FileLock | None:
    """Claim `run_dir` for this run (rank 0 locks it; returns the lock, or None on other ranks) and
    write config.yaml; on resume, refuse a changed config and name the fields that differ."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InstructuneError(f"output_dir {run_dir} is a file, not a folder; choose a folder path "
                               "(output_dir=runs/NAME).")
    saved = run_dir / "config.yaml"
    if resume and saved.exists():
        before = yaml.safe_load(saved.read_text())
        diff = sorted(differences(before, config))
        if diff:
            raise InstructuneError(f"--resume with a changed config: {', '.join(diff)} differ from {saved}. "
                                   "Resume with the same config, or train into a new output_dir.")
    if not main:
        return None
    foreign = _foreign_entries(run_dir)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InstructuneError(f"output_dir {run_dir} already holds files no instructune run wrote ({shown}); "
                               "choose a new or empty folder (output_dir=runs/NAME), or pass --overwrite to write "
                               "the run beside them (nothing of theirs is deleted).")
    _make(run_dir)
    lock = _lock(run_dir)
    try:
        if not resume and (run_dir / "train_log.jsonl").exists():
            if not overwrite:
                raise InstructuneError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                                       "start it afresh, or choose another output_dir (output_dir=runs/NAME).")
            clear(run_dir)
        try:  # whole or not at all: a kill mid-write must not leave a config that --resume cannot read
            write_text_atomic(saved, yaml.safe_dump(config, sort_keys=False))
        except OSError as e:
            raise InstructuneError(f"could not write {saved} ({ckpt.why(e, run_dir)}); free disk space there or "
                                   "choose another output_dir.") from None
    except BaseException:
        lock.release()
        raise
    return lock


def _foreign_entries(run_dir: Path) -> list[str]:
    """Entries of an existing folder that are not a run's; none when the folder is a marked run folder."""
    if not run_dir.is_dir() or (run_dir / MARKER).exists():
        return []
    return sorted(p.name + "/" * p.is_dir() for p in run_dir.iterdir())


def _make(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / MARKER).exists():
            (run_dir / MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    except OSError as e:
        raise InstructuneError(f"cannot write to output_dir {run_dir} ({e.strerror or e}); choose a folder you can "
                               "write to (output_dir=runs/NAME) or fix its permissions.") from None


def _lock(run_dir: Path) -> FileLock:
    """Hold the folder's lock file (released when this run ends or its process dies), naming the holder."""
    lock, owner = FileLock(str(run_dir / LOCK), timeout=0), run_dir / f"{LOCK}.owner"
    try:
        lock.acquire()
    except Timeout:
        held = owner.read_text().strip() if owner.exists() else "another process"
        raise InstructuneError(f"{run_dir} is in use by another run ({held}); wait for it to finish, stop it, or "
                               "train into another output_dir.") from None
    with contextlib.suppress(OSError):  # only a courtesy to the next run: a full disk must not stop this one
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return lock


def clear(run_dir: Path) -> None:
    """Delete what an earlier run wrote in `run_dir` (exact names only), keeping the marker and lock."""
    for p in run_dir.iterdir():
        if is_own(p.name) and p.name not in (MARKER, LOCK, f"{LOCK}.owner"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def release(lock: FileLock | None) -> None:
    """Let go of the folder's lock (None: nothing held)."""
    if lock is not None:
        lock.release()


def differences(a: object, b: object, prefix: str = "") -> list[str]:
    """`field (old -> new)` for every leaf that differs between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} ({a!r} -> {b!r})"]


def save_output(model: Model, tok: Tokenizer, run_dir: Path, peft: bool) -> Path:
    """An adapter loadable by peft.PeftModel.from_pretrained, or a full model for transformers.

    Every process calls it and rank 0 writes; FSDP2-sharded weights are gathered to it first."""
    out = run_dir / ("adapter" if peft else "model")
    state = ckpt.full_state(model) if ckpt.sharded(model) else None  # a collective: before the rank test
    if ckpt.rank() == 0:
        try:
            model.save_pretrained(out, state_dict=state)
            tok.save_pretrained(out)
        except (OSError, SafetensorError) as e:
            shutil.rmtree(out, ignore_errors=True)  # never a half-written result that looks whole
            raise InstructuneError(f"could not write {out} ({ckpt.why(e, run_dir)}); free disk space in {run_dir} and "
                                   "train again (best/ holds the best weights if the run kept checkpoints).") from None
    return out


def write_json(path: Path, data: object) -> None:
    """A small result file, written whole or not at all."""
    try:
        write_text_atomic(path, json.dumps(data, indent=2))
    except OSError as e:
        raise InstructuneError(f"could not write {path} ({ckpt.why(e, path.parent)}); free disk space there and train again."
                               ) from None
