"""The trainer: every run is trained here, whoever asks (`instructune train`, `instructune.train`, the sweep,
the forgetting study, sequential training, the demo). It reads top to bottom: config, machine, model,
method, data, loop, evaluate, save.

    result = train(load_config(TrainConfig, "configs/lora-rotten-tomatoes.yaml", ["max_steps=100"]))
    result.test["accuracy"], result.output_dir / "adapter"
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import DistributedType, set_seed

from instructune import hardware
from instructune.adapters.registry import register_adapter
from instructune.config import to_dict
from instructune.data import chat_template
from instructune.errors import InstructuneError
from instructune.forgetting.cures import build_regularizer
from instructune.forgetting.monitor import Monitor
from instructune.forgetting.suite import RetentionSuite
from instructune.methods import METHODS, count_parameters, lora
from instructune.metrics import HEADLINE
from instructune.models import load_model, resolve_model
from instructune.training import attention, run_data, run_dir, setup
from instructune.training import checkpoint as ckpt
from instructune.training.config import TrainConfig
from instructune.training.loop import LoopSettings, LoopState, restore, train_loop
from instructune.training.run_data import RunData
from instructune.types import JSON, Log, Model, Tokenizer

if TYPE_CHECKING:
    from accelerate import Accelerator

    from instructune.forgetting.cures.base import Regularizer
    from instructune.hardware.precision import PrecisionChoice


@dataclass
class TrainResult:
    """What a run gives back: its scores, where it saved, and the trained model in memory."""

    metrics: JSON
    """What metrics.json holds (a stopped run: only `stopped` and `step`)."""
    model: torch.nn.Module
    """The trained model (best validation weights), in eval mode. A bf16 PEFT run stores its frozen
    linear layers in bf16: call it under `torch.autocast(..., dtype=torch.bfloat16)`."""
    tokenizer: Tokenizer
    """Its tokenizer (a transformers `PreTrainedTokenizerBase`), with the chat template the run used."""
    output_dir: Path
    """The run folder: adapter/ or model/, best/, metrics.json, train_log.jsonl."""

    @property
    def stopped(self) -> str:
        """Why training ended: `max_steps`, `early_stopping`, `forgetting_budget`, or `signal SIGTERM`..."""
        return str(self.metrics["stopped"])

    @property
    def finished(self) -> bool:
        """True unless a signal stopped the run before it was scored and saved (resume it to finish)."""
        return not self.stopped.startswith("signal")

    @property
    def steps(self) -> int:
        """Optimiser steps taken."""
        return int(self.metrics.get("steps", self.metrics.get("step", 0)))

    @property
    def validation(self) -> dict[str, float]:
        """The validation scores of the weights kept (best/), which chose them; empty for a stopped run."""
        return {k: v for k, v in self.metrics.get("validation", {}).items() if isinstance(v, (int, float))}

    @property
    def test(self) -> dict[str, float]:
        """The test-split scores of the kept weights, read once at the end; empty for a stopped run."""
        return {k: v for k, v in self.metrics.get("test", {}).items() if isinstance(v, (int, float))}

    @property
    def saved(self) -> Path:
        """The folder to load the result from: the adapter of a PEFT run, else the full model."""
        return self.output_dir / ("adapter" if (self.output_dir / "adapter").is_dir() else "model")


def train(cfg: TrainConfig, resume: bool = False, log: Log = print, overwrite: bool = False,
             allow_data_change: bool = False, observe: Callable[[int, JSON], object] | None = None) -> TrainResult:
    """Fine-tune as `cfg` says into its output_dir, which the run claims and locks while it writes.

    `resume` continues from the newest checkpoint; `overwrite` lets a run write into a folder that
    holds other files (never deleting them) or start a finished run's folder afresh;
    `allow_data_change` resumes on training data other than the checkpoint's; `observe(step, scores)`
    sees every validation (a search prunes trials from there)."""
    # --- config, machine and run folder
    say = log if setup.main_process() else None  # the machine lines once, from rank 0
    threads = hardware.setup_threads(cfg.threads, log=say)
    precision = hardware.resolve_precision(cfg.precision, hardware.shapes_of(cfg.model), log=say)
    engine = setup.accelerator(precision.precision)
    setup.check_fsdp(engine, log)
    if say and (note := setup.launch_note()):
        say(note)
    set_seed(cfg.seed)
    run_data.check(cfg)  # data problems in seconds, before the model loads
    out = Path(cfg.output_dir)
    lock = run_dir.prepare(out, to_dict(cfg), resume, engine.is_main_process, overwrite)
    try:
        return _train(cfg, engine, out, threads, precision, resume, allow_data_change, log, observe)
    finally:
        run_dir.release(lock)


def _train(cfg: TrainConfig, engine: Accelerator, out: Path, threads: int, precision: PrecisionChoice, resume: bool,
           allow_data_change: bool, log: Log, observe: Callable[[int, JSON], object] | None) -> TrainResult:
    start = time.time()

    # --- model and method: what trains is printed
    model, tok, kernel = _model_and_method(cfg, engine.device.type, log)
    trainable, total = count_parameters(model)
    log(f"method {_label(cfg)}: {trainable:,} trainable / {total:,} parameters ({100 * trainable / total:.2f}%), "
        f"{kernel} attention")

    # --- data, and the forgetting cures that read the keep tasks
    data = RunData.build(cfg, tok, log)
    regularizers = [build_regularizer(r.name, model, data.keep_batches, r.lam, r.options)
                    for r in cfg.regularizers]

    total_steps = cfg.loop.max_steps or cfg.loop.epochs * math.ceil(data.batches_per_epoch / cfg.loop.grad_accum)
    monitor = _watch(cfg, model, tok, precision.dtype, engine, total_steps, log) if cfg.retention else None

    # --- optimiser, schedule, loop
    model, optimizer, scheduler = _optimiser(cfg, model, engine, total_steps, precision.precision)
    state = (_resumed(out, engine.unwrap_model(model), optimizer, scheduler, regularizers, data.sha256,
                      allow_data_change, log) if resume else None)
    for line in data.describe(total_steps):
        log(line)
    if engine.is_main_process:
        run_dir.write_json(out / "data_inspect.json", data.view)

    def validate(m: torch.nn.Module) -> JSON:
        with engine.autocast():  # generation included: the run's precision throughout
            return {**data.validate(engine.unwrap_model(m)), **(monitor.drops(engine.unwrap_model(m)) if monitor
                                                                  else {})}

    try:
        state, reason = train_loop(model, optimizer, scheduler, engine, data.train, tok.pad_token_id,
                                   _loop_settings(cfg, total_steps, data.sha256), out, validate, data.plan,
                                   regularizers, data.replay, state, _shown(observe, log),
                                   monitor and (lambda m: _measured(monitor, m, engine)))
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        raise _out_of_memory(e, cfg, precision.precision) from None
    model = engine.unwrap_model(model)
    if reason.startswith("signal"):
        log(f"stopped by {reason} at step {state.step}; " + ("checkpoint saved: continue with --resume (the same "
            "config and overrides)." if cfg.loop.keep_checkpoints else "no checkpoint written (keep_checkpoints 0): "
            "the run cannot be resumed."))
        return TrainResult({"stopped": reason, "step": state.step}, model, tok, out)

    # --- the best weights on the test split; save
    validation = _best_weights(model, out, state, validate)
    test = _tested(data, model, engine, log)
    metrics = {"method": cfg.method.name, "model": cfg.model, "stopped": reason, "steps": state.step,
               "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
               "validation": validation, "test": test, "attention": kernel, "precision": precision.as_dict(),
               "threads": threads, **_costs(state, engine.num_processes, start), **data.summary(),
               "selection": _selection(cfg, validation, state)}
    run_dir.save_output(model, tok, out, cfg.method.peft)
    if engine.is_main_process:
        _publish(cfg, out, metrics, data.tasks, log)
    engine.end_training()
    return TrainResult(metrics, model, tok, out)


def _tested(data: RunData, model: torch.nn.Module, engine: Accelerator, log: Log) -> JSON:
    """The test scores of `model`, after a line saying what is scored (it takes a while)."""
    if data.test_examples:
        log(f"scoring the best validated weights on {data.test_examples} test examples")
    with engine.autocast():
        return data.test_scores(model)


def _publish(cfg: TrainConfig, out: Path, metrics: JSON, tasks: list[str], log: Log) -> None:
    """Write metrics.json, register the adapter when asked (saying so), and print the test scores."""
    run_dir.write_json(out / "metrics.json", metrics)
    if cfg.register_as and cfg.method.peft:
        folder = register_adapter(cfg.register_as, out / "adapter", task=", ".join(tasks))
        log(f"registered adapter '{cfg.register_as}' in {folder}: use it by name, as in `instructune eval --run "
            f"{out} --adapter {cfg.register_as}` or `instructune serve --adapters {cfg.register_as}`")
    test = {k: round(v, 4) for k, v in metrics["test"].items() if isinstance(v, float)}
    log(f"done: {out} (test {json.dumps(test)})")


def _shown(observe: Callable[[int, JSON], object] | None, log: Log) -> Callable[[int, JSON], None]:
    """`observe(step, scores)` (a search's pruning hook, or None) behind a line printing each validation."""
    def seen(step: int, scores: JSON) -> None:
        shown = [k for k in ("loss", *HEADLINE) if isinstance(scores.get(k), (int, float))]
        log(f"validation, step {step}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in shown))
        if observe is not None:
            observe(step, scores)
    return seen


def _model_and_method(cfg: TrainConfig, device: str, log: Log) -> tuple[Model, Tokenizer, str]:
    """The model with its attention kernel chosen and the method applied; and that kernel's name."""
    model, tok = load_model(cfg.model)
    chat_template.use_chat_format(tok, cfg.data.chat_format)  # saved with the adapter or model, used at inference
    c = model.config
    length = cfg.data.max_length + cfg.method.virtual_tokens
    kernel = attention.set_attention(model, attention.choose(
        cfg.attention, device, cfg.method.prompt_learning, cfg.loop.batch_size, length, c.num_attention_heads,
        c.num_hidden_layers))
    model = METHODS[cfg.method.name].apply(model, cfg.method.options, tokenizer_path=resolve_model(cfg.model))
    if device == "cpu" and setup.has_large_trainable(model):
        hardware.reuse_freed_memory()  # their gradients are allocated afresh every step (bench/step_levers.py)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, tok, kernel


def _resumed(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, regularizers: list[Regularizer], data_sha256: str,
             allow_data_change: bool, log: Log) -> LoopState | None:
    """The loop state of the newest checkpoint, restored into the model, optimiser, schedule and cures."""
    last = ckpt.latest_checkpoint(out)
    if last is None:
        return None
    state = restore(last, model, optimizer, scheduler, regularizers, data_sha256, allow_data_change)
    log(f"resumed from {last.name} (step {state.step})")
    return state


def _optimiser(cfg: TrainConfig, model: torch.nn.Module, engine: Accelerator, total_steps: int,
               precision: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its schedule, prepared with the model by the engine (DDP, FSDP)."""
    optimizer = setup.adamw([p for p in model.parameters() if p.requires_grad], cfg.optim.lr,
                            cfg.optim.weight_decay, tuple(cfg.optim.betas))
    scheduler = setup.scheduler(optimizer, cfg.optim.schedule, cfg.optim.warmup_steps, total_steps)
    model, optimizer = engine.prepare(model, optimizer)
    if precision == "bf16" and cfg.method.peft and engine.distributed_type != DistributedType.FSDP:
        setup.frozen_linears_to_bf16(engine.unwrap_model(model))  # after the regularizers' fp32 estimates
    return model, optimizer, scheduler


def _out_of_memory(e: BaseException, cfg: TrainConfig, precision: str) -> BaseException:
    """Running out of memory becomes advice on the knobs that trade memory for time; anything else stays."""
    if not setup.is_out_of_memory(e):
        return e
    return InstructuneError(setup.oom_advice(
        cfg.model, cfg.method.name, precision, cfg.loop.batch_size, cfg.loop.grad_accum, cfg.data.max_length,
        cfg.gradient_checkpointing, ckpt.latest_checkpoint(Path(cfg.output_dir))))


def _watch(cfg: TrainConfig, model: torch.nn.Module, tok: Tokenizer, dtype: str, engine: Accelerator, total_steps: int,
           log: Log) -> Monitor:
    """The retention suite of `cfg.retention` and the untrained model's scores on it."""
    if cfg.loop.retention_every > total_steps:
        raise InstructuneError(f"retention_every {cfg.loop.retention_every} is larger than the run ({total_steps} steps); "
                               "measure more often or drop it.")
    r, split = cfg.retention, cfg.data.split
    # validation rows: the suite chooses best/ and stops runs; the test rows stay for a study to report
    suite = RetentionSuite.build(r.suite_spec(), split, cfg.seed, dtype, held_out="validation")
    log(f"retention: {len(suite.tasks)} task(s), {len(suite.probe)} probe prompts, {len(suite.texts)} texts "
        f"(validation rows), scored at each validation" + (f" and every {cfg.loop.retention_every} steps" if cfg.loop.retention_every else ""))
    model.eval()
    with engine.autocast():
        monitor = Monitor.start(suite, model, tok)
    model.train()
    return monitor


def _selection(cfg: TrainConfig, validation: JSON, state: LoopState) -> JSON | None:
    """Which validation best/ holds and how many validations the forgetting budget ruled out."""
    if cfg.retention is None:
        return None
    return {"select": cfg.loop.select, "step": validation.get("step"), "budget": cfg.loop.forgetting_budget,
            "validations_over_budget": state.over_budget_total}


def _measured(monitor: Monitor, model: torch.nn.Module, engine: Accelerator) -> dict[str, float]:
    with engine.autocast():
        return monitor.drops(model)


def _label(cfg: TrainConfig) -> str:
    return "lora (DoRA)" if isinstance(cfg.method.options, lora.Options) and cfg.method.options.dora else cfg.method.name


def _loop_settings(cfg: TrainConfig, total_steps: int, data_sha256: str) -> LoopSettings:
    return LoopSettings(cfg.loop, total_steps, cfg.seed, cfg.optim.max_grad_norm,
                        only_completion_logits=not cfg.method.prompt_learning, data_sha256=data_sha256)


def _best_weights(model: torch.nn.Module, out: Path, state: LoopState,
                  validate: Callable[[torch.nn.Module], JSON]) -> JSON:
    """Load the best validated weights into `model` (eval mode); returns their validation scores.

    The loop validated them already: their scores are in best/scores.json, or in memory when they
    are the final weights of a run that keeps no checkpoints."""
    best = out / "best"
    if (best / "trainable.safetensors").exists():
        ckpt.load_trainable(model, best / "trainable.safetensors")
    model.eval()
    if (best / "scores.json").exists():
        return json.loads((best / "scores.json").read_text())
    return state.best_scores or validate(model)


def _costs(state: LoopState, processes: int, start: float) -> JSON:
    return {"skipped_batches": state.skipped_batches,
            "tokens_per_s": state.tokens * processes / max(state.train_seconds, 1e-9),
            "train_tokens": state.tokens * processes, "train_seconds": state.train_seconds,
            "peak_memory_mb": setup.peak_memory_mb(), "wall_seconds": time.time() - start}

