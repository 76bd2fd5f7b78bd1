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
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from instructune.errors import InstructuneError
from instructune.forgetting.monitor import is_drop, over_budget
from instructune.training import checkpoint as ckpt
from instructune.training.batching import collate, completion_loss_sum

if TYPE_CHECKING:
    from instructune.training.config import LoopConfig


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
    over_budget: int = 0
    """Validations in a row whose retention drops exceeded the forgetting budget."""
    over_budget_total: int = 0


@dataclass
class LoopSettings:
    """The config's loop section, whole, and what the trainer works out for this run."""

    loop: LoopConfig
    total_steps: int
    seed: int
    max_grad_norm: float
    only_completion_logits: bool
    data_sha256: str = ""
    """Hash of the encoded training examples, kept in each checkpoint (a resume on other data is refused)."""


def train_loop(model: Any, optimizer: Any, scheduler: Any, accelerator: Any, train: list[dict], pad_id: int,
               settings: LoopSettings, run_dir: Path, validate: Callable[[Any], dict[str, float]],
               plan: Callable[[int], list[list[int]]], regularizers: list[Any] = (),
               replay: list[dict] | None = None, state: LoopState | None = None,
               observe: Callable[[int, dict[str, Any]], None] | None = None,
               retain: Callable[[Any], dict[str, float]] | None = None) -> tuple[LoopState, str]:
    """Train until total_steps (or early stopping, or a signal); returns the state and why it stopped.

    `plan(epoch)` gives the epoch's micro-batches as index lists into `train`; it must be the same
    for the same epoch every time, which is what makes resuming exact. `observe(step, scores)` sees
    every validation (a search prunes a trial from there by raising); `retain(model)` measures the
    retention drops logged every `retention_every` steps.
    """
    st = state or LoopState()
    per_epoch = len(plan(0))
    stream = _micro_batches(plan, per_epoch, st.position)
    run = _Run(model, optimizer, scheduler, accelerator, train, pad_id, settings, run_dir, validate, regularizers,
               replay, st, per_epoch, observe, retain)
    reason = "max_steps"
    model.train()
    try:
        while st.step < settings.total_steps and reason == "max_steps":
            reason = run.step([next(stream) for _ in range(settings.loop.grad_accum)])
        accelerator.wait_for_everyone()  # the main process has written best/ and the last checkpoint
    finally:
        run.close()
    return st, reason


class _Run:
    """One run's moving parts: what `train_loop` steps, logs and saves."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, accelerator: Any, train: list[dict], pad_id: int,
                 s: LoopSettings, run_dir: Path, validate: Callable, regularizers: Any, replay: list[dict] | None,
                 st: LoopState, per_epoch: int, observe: Callable | None = None,
                 retain: Callable | None = None) -> None:
        self.model, self.optimizer, self.scheduler, self.accelerator = model, optimizer, scheduler, accelerator
        self.train, self.pad_id, self.s, self.run_dir, self.validate = train, pad_id, s, run_dir, validate
        self.regularizers, self.replay, self.st, self.per_epoch = regularizers, replay, st, per_epoch
        self.observe, self.retain = observe, retain
        self.main = accelerator.is_main_process
        self.log = open(run_dir / "train_log.jsonl", "a") if self.main else None  # noqa: SIM115 (see close)
        self.tb = SummaryWriter(str(run_dir / "tensorboard")) if self.main else None
        if self.main:
            ckpt.remove_partial(run_dir)  # left by a write that a crash cut short
        self.stop_flag = _install_signal_handlers()
        self.bar = tqdm(total=s.total_steps, initial=st.step, disable=not self.main, desc="train",
                        dynamic_ncols=True)

    def step(self, window: list[tuple[int, tuple[int, list[int]]]]) -> str:
        """One optimiser step over a window of micro-batches; returns why to stop ("max_steps": go on)."""
        s, st, acc = self.s, self.st, self.accelerator
        t0 = time.perf_counter()
        batches = [_rank_share(collate(_with_replay(self.train, idx, self.replay, s, pos), self.pad_id), acc)
                   for pos, (epoch, idx) in window]
        # the tokens the loss predicts: a row's first label never is (plain text trains its first token's label)
        n_tokens = acc.reduce(torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
                                           device=acc.device), "sum").item()
        loss_sum = _accumulate(self.model, batches, acc, n_tokens, self.regularizers, s)
        if not self._apply(loss_sum):
            self._skip_bad(window)
            return "max_steps"
        st.step += 1
        st.position += s.loop.grad_accum
        st.tokens += sum(int(b["attention_mask"].sum()) for b in batches)
        st.train_seconds += time.perf_counter() - t0
        self._report(acc.reduce(torch.tensor(loss_sum, device=acc.device), "sum").item() / max(n_tokens, 1),
                     window[-1][1][0])
        return self._after_step()

    def _apply(self, loss_sum: float) -> bool:
        """Clip and take the optimiser step; False (nothing applied) on a non-finite loss or gradient."""
        if not math.isfinite(loss_sum):
            return False
        for r in self.regularizers:
            r.before_step(self.model)
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm or float("inf"))
        if not math.isfinite(float(norm)):
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for r in self.regularizers:
            r.after_step(self.model)
        return True

    def _skip_bad(self, window: list[tuple[int, tuple[int, list[int]]]]) -> None:
        """Count and skip a bad batch when asked to; otherwise stop, naming its examples."""
        st = self.st
        if not self.s.loop.skip_bad_batches:
            ids = [self.train[i].get("id", i) for _, (_, idx) in window for i in idx]
            last = ckpt.latest_checkpoint(self.run_dir)
            raise InstructuneError(
                f"non-finite loss or gradient at step {st.step + 1} (examples {ids[:8]}); the run stopped. "
                f"Last good checkpoint: {last or 'none'}. Lower optim.lr, use precision=fp32, or set "
                "skip_bad_batches=true to skip such batches.")
        st.skipped_batches += 1
        self.optimizer.zero_grad(set_to_none=True)
        st.position += self.s.loop.grad_accum

    def _report(self, loss: float, epoch: int) -> None:
        st, lr = self.st, self.scheduler.get_last_lr()[0]
        tok_s = st.tokens / max(st.train_seconds, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
        if self.main and (st.step % self.s.loop.log_every == 0 or st.step in (1, self.s.total_steps)):
            _log(self.log, self.tb, {"step": st.step, "loss": loss, "lr": lr, "tokens_per_s": tok_s, "epoch": epoch})

    def _after_step(self) -> str:
        """Validate when due, save when due, and say whether to stop (and why)."""
        s, st, reason = self.s, self.st, "max_steps"
        epoch_end = (st.position // self.per_epoch) != ((st.position - s.loop.grad_accum) // self.per_epoch)
        due = (s.loop.eval_every and st.step % s.loop.eval_every == 0) or epoch_end or st.step == s.total_steps
        if due:
            reason = _validate(self.model, self.validate, st, self.run_dir, self.accelerator, self.log, self.tb, s,
                               self.observe) or reason
        elif self.retain and s.loop.retention_every and st.step % s.loop.retention_every == 0:
            self.model.eval()
            drops = self.retain(self.accelerator.unwrap_model(self.model))
            self.model.train()
            if self.main:
                _log(self.log, self.tb, {"step": st.step, **drops})
        stop = _anyone(self.stop_flag["stop"], self.accelerator)
        if s.loop.keep_checkpoints and ((s.loop.save_every and st.step % s.loop.save_every == 0) or stop
                                   or reason != "max_steps" or st.step == s.total_steps):
            _save(self.run_dir, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler, st,
                  self.regularizers, s)
        return f"signal {self.stop_flag['name'] or 'on another process'}" if stop else reason

    def close(self) -> None:
        self.bar.close()
        for f in (self.log, self.tb):  # on a full disk their last flush fails: the error that stopped the run says so
            with contextlib.suppress(OSError):
                if f:
                    f.close()
        _restore_signal_handlers(self.stop_flag)


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
    if replay and s.loop.replay_fraction > 0:
        rng = random.Random(s.seed * 7919 + pos)
        extra = max(1, round(s.loop.replay_fraction * len(idx)))
        rows += [replay[rng.randrange(len(replay))] for _ in range(extra)]
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
              s: LoopSettings, observe: Callable | None = None) -> str | None:
    """Run validation, keep the best weights (within the forgetting budget, when selecting on the
    trade-off), and say why to stop, if so (early stopping, or the budget exceeded too long)."""
    model.eval()
    scores = validate(model)
    model.train()
    if accelerator.is_main_process:
        # retention drops keep their own names (`drop/<measure>`, `drop_relative/<measure>`) at a validation,
        # as between validations
        _log(log, tb, {"step": st.step, **{k if is_drop(k) else f"val_{k}": v for k, v in scores.items()}})
    if observe is not None:
        observe(st.step, scores)
    over = over_budget(scores, s.loop.forgetting_budget) if s.loop.select == "tradeoff" else []
    st.over_budget = st.over_budget + 1 if over else 0
    st.over_budget_total += bool(over)
    if not over and scores["loss"] < st.best_val_loss:
        st.best_val_loss, st.evals_without_improvement = scores["loss"], 0
        st.best_scores = {"step": st.step, **scores}
        if s.loop.keep_checkpoints == 0 and st.step == s.total_steps:
            # nothing is kept for a resume and these final weights are the best: the run's
            # output is saved from memory, so best/ would only be a copy (an older one is stale)
            if ckpt.rank() == 0:
                shutil.rmtree(run_dir / "best", ignore_errors=True)
        else:
            _save_best(run_dir, accelerator.unwrap_model(model), st.step, scores)
    else:
        st.evals_without_improvement += 1
    if s.loop.budget_patience and st.over_budget >= s.loop.budget_patience:
        return "forgetting_budget"
    patience = s.loop.early_stopping_patience
    return "early_stopping" if patience and st.evals_without_improvement >= patience else None


def _save_best(run_dir: Path, model: Any, step: int, scores: dict[str, float]) -> None:
    """Every process calls it and rank 0 writes best/ (sharded weights are gathered to it first)."""
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
        safetensors.torch.save_file(weights, str(tmp / "trainable.safetensors"))
        (tmp / "scores.json").write_text(json.dumps({"step": step, **scores}))
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (f"best/ (step {json.loads((best / 'scores.json').read_text())['step']}) is intact"
                if (best / "scores.json").exists() else "no earlier best weights exist")
        raise InstructuneError(f"could not write the best weights of step {step} to {best} ({ckpt.why(e, run_dir)}); "
                               f"{kept}. Free disk space in {run_dir} and resume with --resume.") from None
    shutil.rmtree(best, ignore_errors=True)  # a crash from here on: --resume redoes this step and rewrites best/
    os.rename(tmp, best)


def _save(run_dir: Path, model: Any, optimizer: Any, scheduler: Any, st: LoopState, regularizers: Any,
          s: LoopSettings) -> None:
    extra = {f"reg{i}": r.state_dict() for i, r in enumerate(regularizers) if r.state_dict()}
    state = {**asdict(st), "data_sha256": s.data_sha256}
    state["best_val_loss"] = None if math.isinf(st.best_val_loss) else st.best_val_loss
    ckpt.save_checkpoint(run_dir, st.step, model, optimizer, scheduler, state, extra, keep=s.loop.keep_checkpoints)


def _anyone(flag: bool, accelerator: Any) -> bool:
    """Whether any process saw `flag` (a signal): all then save, a collective under FSDP, and stop together."""
    return accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), "sum").item() > 0


def restore(path: Path, model: Any, optimizer: Any, scheduler: Any, regularizers: Any, data_sha256: str = "",
            allow_data_change: bool = False) -> LoopState:
    """Load a checkpoint written by this loop; returns the loop state to continue from.

    A checkpoint of other training data (its hash differs from `data_sha256`) is refused unless
    `allow_data_change`: the data position it holds would point into other examples."""
    state = ckpt.load_checkpoint(path, model, optimizer, scheduler)
    saved_data = state.pop("data_sha256", None)
    if data_sha256 and saved_data and saved_data != data_sha256 and not allow_data_change:
        raise InstructuneError(f"checkpoint {path} was written while training on other data (the training "
                               "examples, their templates or tokenisation changed since); resume with the data "
                               "it was written with, pass --allow-data-change to continue on the new data "
                               "anyway, or train into a new output_dir.")
    unknown = sorted(set(state) - {f.name for f in fields(LoopState)})
    if unknown:
        raise InstructuneError(f"{path / 'trainer_state.json'} has fields this version does not know "
                               f"({', '.join(unknown)}): it was written by another version of instructune or "
                               "edited by hand; resume with the version that wrote it, or train into a new "
                               "output_dir.")
    for i, r in enumerate(regularizers):
        saved = ckpt.load_extra(path, f"reg{i}")
        if saved:
            r.load_state_dict(saved)
    if state.get("best_val_loss") is None:
        state["best_val_loss"] = math.inf
    return LoopState(**state)


@torch.no_grad()
def _log(log: Any, tb: Any, record: dict[str, Any]) -> None:
    try:
        log.write(json.dumps(record) + "\n")
        log.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                tb.add_scalar(k, v, record["step"])
    except OSError as e:
        raise InstructuneError(f"could not write {log.name} ({ckpt.why(e, Path(log.name).parent)}); free disk space there and continue "
                               "with --resume (the last checkpoint is intact).") from None


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
