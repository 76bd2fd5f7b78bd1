"""Checkpoints that are never half-written: each is built in a temp folder, fsynced, then renamed.

A checkpoint holds the trainable weights (safetensors), optimiser and scheduler state
(`torch.load(weights_only=True)`-safe), RNG states and the trainer state (step, epoch,
data position, best score), which is everything `--resume` needs to continue exactly.

Under FSDP2 (`fully_shard`, as Accelerate's FSDP applies it) each process holds a shard of every
weight (a DTensor). Saving then gathers full, unsharded tensors to rank 0 with torch's
`torch.distributed.checkpoint.state_dict` functions, a collective that every process must join,
and loading hands each process its shard of the full tensors it read: a checkpoint always holds
full tensors, as from a single process (the optimiser state keyed by parameter name, not index).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from instructune.errors import InstructuneError
from instructune.hub import sha256
from instructune.types import JSON

PREFIX = "checkpoint-"
CHECKSUMS = "checksums.json"
STEP = re.compile(rf"{PREFIX}\d{{8}}")
PARTIAL = re.compile(rf"\.tmp-({PREFIX}\d{{8}}|pruned-{PREFIX}\d{{8}}|best)")


def sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 holds the parameters as shards (DTensors): saving and loading are then collective."""
    if not torch.distributed.is_available():
        return False

    return any(isinstance(p, DTensor) for p in model.parameters())


def rank() -> int:
    """This process's rank (0 when not distributed): rank 0 writes every file."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer, gathered from FSDP2 shards into full CPU tensors on rank 0 (other ranks
    get {}). A collective: every process must call it."""

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (contiguous clones: safetensors refuses shared storage).

    Sharded, they are gathered to rank 0 (other ranks get {}), which every process must join."""
    if sharded(model):
        train = {n for n, p in model.named_parameters() if p.requires_grad}
        return {n: t.contiguous() for n, t in full_state(model).items() if n in train}
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimiser's state dict; sharded, gathered to rank 0 and keyed by parameter name (others get {})."""
    if sharded(model):
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: JSON,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None, keep: int = 2) -> Path:
    """Write checkpoint-STEP atomically, then prune all but the `keep` newest.

    Every process calls it and rank 0 writes; sharded weights and optimiser state are first gathered
    to rank 0, which all processes join."""
    final = run_dir / f"{PREFIX}{step:08d}"
    writer = rank() == 0
    if not writer and not sharded(model):
        return final  # nothing to gather: rank 0 has it all
    weights, optim = trainable_state(model), optimizer_state(model, optimizer)
    if not writer:
        return final
    tmp = run_dir / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        for name, tensors in (extra or {}).items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "python_rng": _py_rng()}, indent=1))
        sums = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)  # its file names too: after a power loss the renamed folder holds every file
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(run_dir)
    except (OSError, SafetensorError, RuntimeError) as e:  # a full disk: safetensors and torch raise their own
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {last.name} is intact" if last else "no earlier checkpoint exists"
        raise InstructuneError(f"could not write checkpoint {final} ({why(e, run_dir)}); {kept}. Free disk space "
                               f"in {run_dir} (or lower keep_checkpoints) and resume with --resume.") from None
    for old in checkpoints(run_dir)[:-keep]:
        doomed = run_dir / f".tmp-pruned-{old.name}"  # renamed first: a crash never leaves a half-deleted checkpoint
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def why(e: BaseException, where: Path | None = None) -> str:
    """An OS, safetensors or torch write error in a few words ("No space left on device"): torch's and
    safetensors' own errors do not say, so a folder with next to no free space is named as full."""
    if getattr(e, "strerror", None):
        return e.strerror  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):
        if where is not None and shutil.disk_usage(where).free < 1 << 20:
            return "No space left on device"
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


def checkpoints(run_dir: Path) -> list[Path]:
    """This run's checkpoint folders, oldest first: exactly `checkpoint-` and 8 digits, ordered by step."""
    found = [p for p in run_dir.glob(f"{PREFIX}*") if STEP.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (temp folders of an interrupted write are ignored)."""
    done = [p for p in checkpoints(run_dir) if (p / "trainer_state.json").exists()]
    return done[-1] if done else None


def remove_partial(run_dir: Path) -> None:
    """Delete the temp folders of writes a crash interrupted (they are never read): this run's own
    names only (`.tmp-checkpoint-NNNNNNNN`, `.tmp-pruned-...`, `.tmp-best`), never a user's `.tmp-draft`."""
    for tmp in run_dir.glob(".tmp-*"):
        if PARTIAL.fullmatch(tmp.name) and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> JSON:
    """Restore weights, optimiser, scheduler and RNG states; return the trainer state."""
    try:
        return _load(path, model, optimizer, scheduler)
    except InstructuneError:
        raise
    except Exception as e:  # safetensors, torch.load (which refuses pickles that carry code), json: many types
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InstructuneError(f"checkpoint {path} cannot be read ({reason}): it is damaged or was not written "
                               "by instructune. To resume from the checkpoint before it, delete that folder; or "
                               "train into a new output_dir.") from None


def load_trainable(model: torch.nn.Module, file: Path) -> None:
    """Copy saved trainable weights (a checkpoint's or best/) into the model's parameters.

    Every process reads the file; sharded, each keeps its own shard of every tensor."""
    weights = load_file(str(file))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise InstructuneError(f"{file} holds parameters this model lacks ({missing[:3]}...): it was written by "
                               "a run with another model or method; start a new output_dir.")
    if sharded(model):  # full tensors in, each process keeps its shard (no broadcast: a bad file fails everywhere)

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)


def verify(path: Path) -> None:
    """Check every file of a checkpoint against the sha256 written with it (older ones have none)."""
    sums_file = path / CHECKSUMS
    if not sums_file.exists():
        return
    sums = json.loads(sums_file.read_text())
    for name, digest in sums.items():
        f = path / name
        if not f.is_file() or sha256(f) != digest:
            state = "missing" if not f.is_file() else "changed since it was written (its sha256 differs)"
            raise InstructuneError(f"checkpoint {path} cannot be read ({name} is {state}): it is damaged. To resume "
                                   "from the checkpoint before it, delete that folder; or train into a new "
                                   "output_dir.")


def _load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler) -> JSON:
    verify(path)
    load_trainable(model, path / "trainable.safetensors")
    blob = torch.load(path / "optim.pt", weights_only=True)
    by_name = any(isinstance(i, str) for g in blob["optimizer"]["param_groups"] for i in g["params"])
    if by_name != sharded(model):
        how = ("under FSDP (its optimiser state is keyed by parameter name): resume it under FSDP" if by_name else
               "without FSDP: resume it without FSDP")
        raise InstructuneError(f"checkpoint {path} was written {how}, or train into a new output_dir.")
    if sharded(model):
        set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    state = json.loads((path / "trainer_state.json").read_text())
    random.setstate(_tuplify(state.pop("python_rng")))
    return state


def load_extra(path: Path, name: str) -> dict[str, torch.Tensor] | None:
    f = path / f"{name}.safetensors"
    return load_file(str(f)) if f.exists() else None


def _py_rng() -> list[object]:
    return json.loads(json.dumps(random.getstate()))


def _tuplify(x: object) -> object:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
