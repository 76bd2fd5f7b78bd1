"""Supervised instruction fine-tuning, top to bottom: config, machine, model, method, data, loop,
evaluate, save.

    instructune train configs/lora-rotten-tomatoes.yaml optim.lr=3e-4 max_steps=100
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType, set_seed

from instructune import hardware
from instructune.adapters.registry import register_adapter
from instructune.config import to_dict
from instructune.data import chat
from instructune.errors import InstructuneError
from instructune.evaluation.metrics import HEADLINE
from instructune.forgetting.suite import RetentionSuite
from instructune.methods import METHODS, count_parameters
from instructune.models import load_model, resolve_model
from instructune.training import attention, run_data, run_dir, setup
from instructune.training import checkpoint as ckpt
from instructune.training.config import TrainConfig
from instructune.training.loop import LoopSettings, LoopState, restore, train_loop
from instructune.training.regularizers import build_regularizer
from instructune.training.retention import Monitor
from instructune.training.run_data import RunData


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    """What metrics.json holds."""
    model: Any
    """The trained model (best validation weights), in eval mode. A bf16 PEFT run stores its frozen
    linear layers in bf16: call it under `torch.autocast(..., dtype=torch.bfloat16)`."""
    tokenizer: Any


def finetune(cfg: TrainConfig, resume: bool = False, log: Any = print, overwrite: bool = False,
             allow_data_change: bool = False, observe: Any = None) -> TrainResult:
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


def _train(cfg: TrainConfig, engine: Any, out: Path, threads: int, precision: Any, resume: bool,
           allow_data_change: bool, log: Any, observe: Any) -> TrainResult:
    start = time.time()

    # --- model and method: what trains is printed
    model, tok, kernel = _model_and_method(cfg, engine.device.type, log)
    trainable, total = count_parameters(model)
    log(f"method {_label(cfg)}: {trainable:,} trainable / {total:,} parameters ({100 * trainable / total:.2f}%), "
        f"{kernel} attention")

    # --- data, and the forgetting cures that read the keep tasks
    data = RunData.build(cfg, tok, log)
    regularizers = [build_regularizer(r.name, model, data.keep_batches, lam=r.lam, **r.options)
                    for r in cfg.regularizers]

    total_steps = cfg.max_steps or cfg.epochs * math.ceil(data.batches_per_epoch / cfg.grad_accum)
    monitor = _watch(cfg, model, tok, precision.dtype, engine, total_steps, log) if cfg.retention else None

    # --- optimiser, schedule, loop
    model, optimizer, scheduler = _optimiser(cfg, model, engine, total_steps, precision.precision)
    state = (_resumed(out, engine.unwrap_model(model), optimizer, scheduler, regularizers, data.sha256,
                      allow_data_change, log) if resume else None)
    for line in data.describe(total_steps):
        log(line)
    if engine.is_main_process:
        run_dir.write_json(out / "data_inspect.json", data.view)

    def validate(m: Any) -> dict[str, Any]:
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
            "config and overrides)." if cfg.keep_checkpoints else "no checkpoint written (keep_checkpoints 0): "
            "the run cannot be resumed."))
        return TrainResult({"stopped": reason, "step": state.step}, model, tok)

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
    return TrainResult(metrics, model, tok)


def _tested(data: RunData, model: Any, engine: Any, log: Any) -> dict[str, Any]:
    """The test scores of `model`, after a line saying what is scored (it takes a while)."""
    if data.test_examples:
        log(f"scoring the best validated weights on {data.test_examples} test examples")
    with engine.autocast():
        return data.test_scores(model)


def _publish(cfg: TrainConfig, out: Path, metrics: dict[str, Any], tasks: list[str], log: Any) -> None:
    """Write metrics.json, register the adapter when asked (saying so), and print the test scores."""
    run_dir.write_json(out / "metrics.json", metrics)
    if cfg.register_as and cfg.method.peft:
        folder = register_adapter(cfg.register_as, out / "adapter", task=", ".join(tasks))
        log(f"registered adapter '{cfg.register_as}' in {folder}: use it by name, as in `instructune eval --run "
            f"{out} --adapter {cfg.register_as}` or `instructune serve --adapters {cfg.register_as}`")
    test = {k: round(v, 4) for k, v in metrics["test"].items() if isinstance(v, float)}
    log(f"done: {out} (test {json.dumps(test)})")


def _shown(observe: Any, log: Any) -> Any:
    """`observe(step, scores)` (a search's pruning hook, or None) behind a line printing each validation."""
    def seen(step: int, scores: dict[str, Any]) -> None:
        shown = [k for k in ("loss", *HEADLINE) if isinstance(scores.get(k), (int, float))]
        log(f"validation, step {step}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in shown))
        if observe is not None:
            observe(step, scores)
    return seen


def _model_and_method(cfg: TrainConfig, device: str, log: Any) -> tuple[Any, Any, str]:
    """The model with its attention kernel chosen and the method applied; and that kernel's name."""
    model, tok = load_model(cfg.model)
    chat.use_chat_format(tok, cfg.data.chat_format)  # saved with the adapter or model, used at inference
    c = model.config
    length = cfg.data.max_length + (cfg.method.num_virtual_tokens if cfg.method.prompt_learning else 0)
    kernel = attention.set_attention(model, attention.choose(
        cfg.attention, device, cfg.method.prompt_learning, cfg.batch_size, length, c.num_attention_heads,
        c.num_hidden_layers))
    model = METHODS[cfg.method.name].apply(model, cfg.method.options, tokenizer_path=resolve_model(cfg.model))
    if device == "cpu" and setup.has_large_trainable(model):
        hardware.reuse_freed_memory()  # their gradients are allocated afresh every step (bench/step_levers.py)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, tok, kernel


def _resumed(out: Path, model: Any, optimizer: Any, scheduler: Any, regularizers: list[Any], data_sha256: str,
             allow_data_change: bool, log: Any) -> LoopState | None:
    """The loop state of the newest checkpoint, restored into the model, optimiser, schedule and cures."""
    last = ckpt.latest_checkpoint(out)
    if last is None:
        return None
    state = restore(last, model, optimizer, scheduler, regularizers, data_sha256, allow_data_change)
    log(f"resumed from {last.name} (step {state.step})")
    return state


def _optimiser(cfg: TrainConfig, model: Any, engine: Any, total_steps: int, precision: str) -> tuple[Any, Any, Any]:
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
        cfg.model, cfg.method.name, precision, cfg.batch_size, cfg.grad_accum, cfg.data.max_length,
        cfg.gradient_checkpointing, ckpt.latest_checkpoint(Path(cfg.output_dir))))


def _watch(cfg: TrainConfig, model: Any, tok: Any, dtype: str, engine: Any, total_steps: int, log: Any) -> Monitor:
    """The retention suite of `cfg.retention` and the untrained model's scores on it."""
    if cfg.retention_every > total_steps:
        raise InstructuneError(f"retention_every {cfg.retention_every} is larger than the run ({total_steps} steps); "
                               "measure more often or drop it.")
    r, split = cfg.retention, cfg.data.split_spec()
    # validation rows: the suite chooses best/ and stops runs; the test rows stay for a study to report
    suite = RetentionSuite.build(None, "", "", 0, r.tasks, split, r.probe_prompts, r.probe_tokens, r.text_source,
                                 r.text_limit, 120, cfg.seed, dtype, held_out="validation")
    log(f"retention: {len(suite.tasks)} task(s), {len(suite.probe)} probe prompts, {len(suite.texts)} texts "
        f"(validation rows), scored at each validation" + (f" and every {cfg.retention_every} steps" if cfg.retention_every else ""))
    model.eval()
    with engine.autocast():
        monitor = Monitor.start(suite, model, tok)
    model.train()
    return monitor


def _selection(cfg: TrainConfig, validation: dict[str, Any], state: LoopState) -> dict[str, Any] | None:
    """Which validation best/ holds and how many validations the forgetting budget ruled out."""
    if cfg.retention is None:
        return None
    return {"select": cfg.select, "step": validation.get("step"), "budget": cfg.forgetting_budget,
            "validations_over_budget": state.over_budget_total}


def _measured(monitor: Monitor, model: Any, engine: Any) -> dict[str, float]:
    with engine.autocast():
        return monitor.drops(model)


def _label(cfg: TrainConfig) -> str:
    return "lora (DoRA)" if cfg.method.name == "lora" and cfg.method.dora else cfg.method.name


def _loop_settings(cfg: TrainConfig, total_steps: int, data_sha256: str) -> LoopSettings:
    return LoopSettings(
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, total_steps=total_steps, seed=cfg.seed,
        group_by_length=cfg.group_by_length, max_grad_norm=cfg.optim.max_grad_norm, eval_every=cfg.eval_every,
        save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every,
        patience=cfg.early_stopping_patience, skip_bad_batches=cfg.skip_bad_batches,
        only_completion_logits=not cfg.method.prompt_learning, replay_fraction=cfg.replay_fraction,
        data_sha256=data_sha256, retention_every=cfg.retention_every, select=cfg.select,
        forgetting_budget=cfg.forgetting_budget, budget_patience=cfg.budget_patience)


def _best_weights(model: Any, out: Path, state: LoopState, validate: Any) -> dict[str, Any]:
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


def _costs(state: LoopState, processes: int, start: float) -> dict[str, Any]:
    return {"skipped_batches": state.skipped_batches,
            "tokens_per_s": state.tokens * processes / max(state.train_seconds, 1e-9),
            "train_tokens": state.tokens * processes, "train_seconds": state.train_seconds,
            "peak_memory_mb": setup.peak_memory_mb(), "wall_seconds": time.time() - start}

