"""The training loop: completion-only cross-entropy over batches and epochs, through Accelerate.

One optimiser step = `grad_accum` micro-batches; the loss is the summed cross-entropy of their
completion tokens divided by the count of those tokens over the whole accumulated (and, under
DDP, global) batch, so every completion token weighs the same however the batch is split.
Under `accelerate launch` / `torchrun` each process takes its share of every batch
(rows r, r+P, ...), which keeps the global batch, and so the losses, equal to one process.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from instructune.errors import InstructuneError
from instructune.training import checkpoint as ckpt
from instructune.training.batching import collate, completion_loss_sum


@dataclass
class LoopState:
    step: int = 0
    """Optimiser steps taken."""
    position: int = 0
    """Micro-batches consumed, over all epochs: where the data stream resumes."""
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    skipped_batches: int = 0
    best_scores: dict | None = None
    """Validation scores of the best weights so far, with their step."""
    tokens: int = 0
    """Real (non-padding) tokens seen by this process."""
    train_seconds: float = 0.0


@dataclass
class LoopSettings:
    batch_size: int
    grad_accum: int
    total_steps: int
    seed: int
    group_by_length: bool
    max_grad_norm: float
    eval_every: int
    save_every: int
    keep_checkpoints: int
    log_every: int
    patience: int
    skip_bad_batches: bool
    only_completion_logits: bool
    replay_fraction: float = 0.0


class Stop(Exception):
    """Raised inside the loop by a signal handler's flag: save, then leave."""


def train_loop(model: Any, optimizer: Any, scheduler: Any, accelerator: Any, train: list[dict], pad_id: int,
               settings: LoopSettings, run_dir: Path, validate: Callable[[Any], dict[str, float]],
               plan: Callable[[int], list[list[int]]], regularizers: list[Any] = (),
               replay: list[dict] | None = None, state: LoopState | None = None) -> tuple[LoopState, str]:
    """Train until total_steps (or early stopping, or a signal); returns the state and why it stopped.

    `plan(epoch)` gives the epoch's micro-batches as index lists into `train`; it must be the same
    for the same epoch every time, which is what makes resuming exact.
    """
    s, st = settings, state or LoopState()
    per_epoch = len(plan(0))
    stream = _micro_batches(plan, per_epoch, st.position)
    main = accelerator.is_main_process
    log = open(run_dir / "train_log.jsonl", "a") if main else None  # noqa: SIM115 (closed in finally)
    tb = _tensorboard(run_dir) if main else None
    if main:
        ckpt.remove_partial(run_dir)  # left by a write that a crash cut short
    stop_flag = _install_signal_handlers()
    bar = tqdm(total=s.total_steps, initial=st.step, disable=not main, desc="train", dynamic_ncols=True)
    reason = "max_steps"
    model.train()
    try:
        while st.step < s.total_steps:
            t0 = time.perf_counter()
            window = [next(stream) for _ in range(s.grad_accum)]
            batches = [_rank_share(collate(_with_replay(train, idx, replay, s, pos), pad_id), accelerator)
                       for pos, (epoch, idx) in window]
            n_tokens = accelerator.reduce(torch.tensor(sum(int((b["labels"] != -100).sum()) for b in batches),
                                                       device=accelerator.device), "sum").item()
            loss_sum = _accumulate(model, batches, accelerator, n_tokens, regularizers, s)
            bad = not math.isfinite(loss_sum)
            if not bad:
                for r in regularizers:
                    r.before_step(model)
                norm = accelerator.clip_grad_norm_(model.parameters(), s.max_grad_norm or float("inf"))
                bad = not math.isfinite(float(norm))
            if bad:
                ids = [train[i].get("id", i) for _, (_, idx) in window for i in idx]
                if not s.skip_bad_batches:
                    last = ckpt.latest_checkpoint(run_dir)
                    raise InstructuneError(
                        f"non-finite loss or gradient at step {st.step + 1} (examples {ids[:8]}); the run stopped. "
                        f"Last good checkpoint: {last or 'none'}. Lower optim.lr, use precision=fp32, or set "
                        "skip_bad_batches=true to skip such batches.")
                st.skipped_batches += 1
                optimizer.zero_grad(set_to_none=True)
                st.position += s.grad_accum
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for r in regularizers:
                r.after_step(model)
            st.step += 1
            st.position += s.grad_accum
            st.tokens += sum(int(b["attention_mask"].sum()) for b in batches)
            st.train_seconds += time.perf_counter() - t0
            loss = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item() / max(n_tokens, 1)
            tok_s = st.tokens / max(st.train_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", tok_s=f"{tok_s:.0f}")
            if main and (st.step % s.log_every == 0 or st.step == 1):
                _log(log, tb, {"step": st.step, "loss": loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tok_s,
                               "epoch": window[-1][1][0]})
            epoch_end = (st.position // per_epoch) != ((st.position - s.grad_accum) // per_epoch)
            due = (s.eval_every and st.step % s.eval_every == 0) or epoch_end or st.step == s.total_steps
            if due and _validate(model, validate, st, run_dir, accelerator, log, tb, s):
                reason = "early_stopping"
            stop = _anyone(stop_flag["stop"], accelerator)
            if s.keep_checkpoints and ((s.save_every and st.step % s.save_every == 0) or stop
                                       or reason == "early_stopping" or st.step == s.total_steps):
                _save(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, st, regularizers, s)
            if stop:
                reason = f"signal {stop_flag['name'] or 'on another process'}"
            if reason != "max_steps":
                break
        accelerator.wait_for_everyone()  # the main process has written best/ and the last checkpoint
    finally:
        bar.close()
        if log:
            log.close()
        if tb:
            tb.close()
        _restore_signal_handlers(stop_flag)
    return st, reason


def _micro_batches(plan: Callable[[int], list[list[int]]], per_epoch: int,
                   start: int) -> Iterator[tuple[int, tuple[int, list[int]]]]:
    """(position, (epoch, indices)) from `start` on: the same stream every time for a seed."""
    pos = start
    while True:
        epoch, k = divmod(pos, per_epoch)
        for b in plan(epoch)[k:]:
            yield pos, (epoch, b)
            pos += 1


def _with_replay(train: list[dict], idx: list[int], replay: list[dict] | None, s: LoopSettings,
                 pos: int) -> list[dict]:
    """The micro-batch's examples plus round(fraction * batch) replayed ones, drawn by position (resumable)."""
    rows = [train[i] for i in idx]
    if replay and s.replay_fraction > 0:
        rng = random.Random(s.seed * 7919 + pos)
        rows += [replay[rng.randrange(len(replay))] for _ in range(max(1, round(s.replay_fraction * len(idx))))]
    return rows


def _rank_share(batch: dict[str, torch.Tensor], accelerator: Any) -> dict[str, torch.Tensor]:
    p, r = accelerator.num_processes, accelerator.process_index
    return {k: v[r::p].to(accelerator.device) for k, v in batch.items()}


def _accumulate(model: Any, batches: list[dict], accelerator: Any, n_tokens: float, regularizers: Any,
                s: LoopSettings) -> float:
    """Forward and backward every micro-batch of one step; returns the summed CE (this process)."""
    total = 0.0
    scale = accelerator.num_processes / max(n_tokens, 1)  # DDP averages gradients over processes
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        # gradients are all-reduced once per step, on its last micro-batch
        with accelerator.no_sync(model) if not last else nullcontext():
            with accelerator.autocast():
                ce = completion_loss_sum(model, batch, s.only_completion_logits)
                loss = ce * scale
                if last:
                    for r in regularizers:
                        loss = loss + r.penalty(model)
            if not torch.isfinite(loss):
                return float("nan")
            accelerator.backward(loss)
        total += float(ce.detach())
    return total


def _validate(model: Any, validate: Callable, st: LoopState, run_dir: Path, accelerator: Any, log: Any, tb: Any,
              s: LoopSettings) -> bool:
    """Run validation, keep the best weights, and say whether early stopping triggers."""
    model.eval()
    scores = validate(model)
    model.train()
    if accelerator.is_main_process:
        _log(log, tb, {"step": st.step, **{f"val_{k}": v for k, v in scores.items()}})
    if scores["loss"] < st.best_val_loss:
        st.best_val_loss, st.evals_without_improvement = scores["loss"], 0
        st.best_scores = {"step": st.step, **scores}
        if s.keep_checkpoints == 0 and st.step == s.total_steps:
            # nothing is kept for a resume and these final weights are the best: the run's
            # output is saved from memory, so best/ would only be a copy (an older one is stale)
            if ckpt.rank() == 0:
                shutil.rmtree(run_dir / "best", ignore_errors=True)
        else:
            _save_best(run_dir, accelerator.unwrap_model(model), st.step, scores)
    else:
        st.evals_without_improvement += 1
    return bool(s.patience) and st.evals_without_improvement >= s.patience


def _save_best(run_dir: Path, model: Any, step: int, scores: dict[str, float]) -> None:
    """Every process calls it and rank 0 writes best/ (sharded weights are gathered to it first)."""
    import os

    from safetensors.torch import save_file

    writer = ckpt.rank() == 0
    if not writer and not ckpt.sharded(model):
        return
    weights = ckpt.trainable_state(model)
    if not writer:
        return
    tmp, best = run_dir / ".tmp-best", run_dir / "best"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(weights, str(tmp / "trainable.safetensors"))
        (tmp / "scores.json").write_text(json.dumps({"step": step, **scores}))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (f"best/ (step {json.loads((best / 'scores.json').read_text())['step']}) is intact"
                if (best / "scores.json").exists() else "no earlier best weights exist")
        raise InstructuneError(f"could not write the best weights of step {step} to {best} ({e.strerror or e}); "
                               f"{kept}. Free disk space in {run_dir} and resume with --resume.") from None
    shutil.rmtree(best, ignore_errors=True)  # a crash from here on: --resume redoes this step and rewrites best/
    os.rename(tmp, best)


def _save(run_dir: Path, model: Any, optimizer: Any, scheduler: Any, st: LoopState, regularizers: Any,
          s: LoopSettings) -> None:
    extra = {f"reg{i}": r.state_dict() for i, r in enumerate(regularizers) if r.state_dict()}
    state = asdict(st)
    state["best_val_loss"] = None if math.isinf(st.best_val_loss) else st.best_val_loss
    ckpt.save_checkpoint(run_dir, st.step, model, optimizer, scheduler, state, extra, keep=s.keep_checkpoints)


def _anyone(flag: bool, accelerator: Any) -> bool:
    """Whether any process saw `flag` (a signal): all then save, a collective under FSDP, and stop together."""
    return accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), "sum").item() > 0


def restore(path: Path, model: Any, optimizer: Any, scheduler: Any, regularizers: Any) -> LoopState:
    """Load a checkpoint written by this loop; returns the loop state to continue from."""
    state = ckpt.load_checkpoint(path, model, optimizer, scheduler)
    for i, r in enumerate(regularizers):
        saved = ckpt.load_extra(path, f"reg{i}")
        if saved:
            r.load_state_dict(saved)
    if state.get("best_val_loss") is None:
        state["best_val_loss"] = math.inf
    return LoopState(**state)


@torch.no_grad()
def validation_loss(model: Any, examples: list[dict], pad_id: int, batch_size: int = 16,
                    only_completion_logits: bool = True) -> float:
    """Mean cross-entropy per completion token over `examples`."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(next(model.parameters()).device)
                 for k, v in collate(examples[i:i + batch_size], pad_id).items()}
        total += float(completion_loss_sum(model, batch, only_completion_logits))
        count += int((batch["labels"][:, 1:] != -100).sum())
    return total / max(count, 1)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, else the process's peak resident set size (since the last reset)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # Linux: the high-water mark, which reset_peak_memory() can lower
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB, macOS bytes


def reset_peak_memory() -> bool:
    """Start peak_memory_mb() afresh from the memory in use now; False where the OS cannot."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _log(log: Any, tb: Any, record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
            tb.add_scalar(k, v, record["step"])


def _tensorboard(run_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _install_signal_handlers() -> dict[str, Any]:
    """SIGINT / SIGTERM finish the current step, save a checkpoint and stop cleanly."""
    flag: dict[str, Any] = {"stop": False, "name": None, "old": {}}

    def handler(signum: int, _frame: Any) -> None:
        flag["stop"], flag["name"] = True, signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            flag["old"][sig] = signal.signal(sig, handler)
    return flag


def _restore_signal_handlers(flag: dict[str, Any]) -> None:
    for sig, old in flag["old"].items():
        signal.signal(sig, old)
