"""Supervised instruction fine-tuning, top to bottom: config, model, method, data, loop, evaluate, save.

    instructune train configs/lora-rotten-tomatoes.yaml optim.lr=3e-4 max_steps=100
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructune.config import to_dict
from instructune.errors import InstructuneError
from instructune.training.config import TrainConfig


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    """What metrics.json holds."""
    model: Any
    """The trained model (best validation weights), in eval mode. A bf16 PEFT run stores its frozen
    linear layers in bf16: call it under `torch.autocast(..., dtype=torch.bfloat16)`."""
    tokenizer: Any


def finetune(cfg: TrainConfig, resume: bool = False, log: Any = print) -> TrainResult:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, set_seed

    from instructune import hardware
    from instructune.methods import METHODS, count_parameters
    from instructune.models import load_model, resolve_model, set_attention
    from instructune.training import checkpoint as ckpt
    from instructune.training.loop import LoopSettings, peak_memory_mb, restore, train_loop
    from instructune.training.regularizers import build_regularizer

    # --- config, machine and run folder
    threads = hardware.setup_threads(cfg.threads, log=log if _main_process() else None)
    choice = hardware.resolve_precision(cfg.precision, hardware.shapes_of(cfg.model),
                                        log=log if _main_process() else None)
    # a fresh precision setting per run, so runs of different precisions can share one process (the
    # process-level state, which holds the distributed setup, is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed(choice.precision))
    _check_fsdp(accelerator, log)
    set_seed(cfg.seed)
    run_dir = Path(cfg.output_dir)
    _prepare_run_dir(run_dir, cfg, resume, accelerator.is_main_process)
    start = time.time()

    # --- model and method
    model, tok = load_model(cfg.model)
    attention = set_attention(model, _attention(cfg, model, accelerator.device.type))
    model = METHODS[cfg.method.name].apply(model, cfg.method.options, tokenizer_path=resolve_model(cfg.model))
    trainable, total = count_parameters(model)
    if accelerator.device.type == "cpu" and any(p.requires_grad and p.numel() * p.element_size() > 32 << 20
                                                for p in model.parameters()):
        hardware.reuse_freed_memory()  # their gradients are re-allocated every step (bench/step_levers.py)
    log(f"method {cfg.method.name}: {trainable:,} trainable / {total:,} parameters ({100 * trainable / total:.2f}%), "
        f"{attention} attention")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    # --- data
    data = load_task_data(cfg, tok, log)
    regularizers = [build_regularizer(r.name, model, data.keep_batches, lam=r.lam, **r.options)
                    for r in cfg.regularizers]

    # --- optimiser, schedule, loop
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg.optim)
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(data.batches_per_epoch / cfg.grad_accum)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if (choice.precision == "bf16" and cfg.method.peft  # only the adapter is saved
            and accelerator.distributed_type != DistributedType.FSDP):
        frozen_linears_to_bf16(accelerator.unwrap_model(model))  # after the regularizers' fp32 estimates
    state = None
    if resume and (last := ckpt.latest_checkpoint(run_dir)):
        state = restore(last, accelerator.unwrap_model(model), optimizer, scheduler, regularizers)
        log(f"resumed from {last.name} (step {state.step})")
    settings = LoopSettings(
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, total_steps=total_steps, seed=cfg.seed,
        group_by_length=cfg.group_by_length, max_grad_norm=cfg.optim.max_grad_norm, eval_every=cfg.eval_every,
        save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every,
        patience=cfg.early_stopping_patience, skip_bad_batches=cfg.skip_bad_batches,
        only_completion_logits=not cfg.method.prompt_learning,
        replay_fraction=cfg.replay_fraction)
    log(f"{len(data.train)} training examples ({data.dropped} dropped: too long), {total_steps} steps, "
        f"padding {data.padding:.1%} of token slots")
    if data.realised:
        log(f"mixture, examples per task and template in epoch 0: {data.realised(0)}")

    def validate(m: Any) -> dict[str, Any]:
        with accelerator.autocast():  # generation included: the run's precision throughout
            return data.validate(accelerator.unwrap_model(m))

    try:
        state, reason = train_loop(model, optimizer, scheduler, accelerator, data.train, tok.pad_token_id, settings,
                                   run_dir, validate, data.plan,
                                   regularizers, data.replay, state)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        raise InstructuneError(_oom_advice(cfg, choice.precision, ckpt.latest_checkpoint(run_dir))) from None
    model = accelerator.unwrap_model(model)
    if reason.startswith("signal"):
        kept = ("checkpoint saved. Resume with --resume." if cfg.keep_checkpoints else
                "no checkpoint written (keep_checkpoints 0): the run cannot be resumed.")
        log(f"stopped by {reason} at step {state.step}; {kept}")
        return TrainResult({"stopped": reason, "step": state.step}, model, tok)

    # --- evaluate the best weights on the test split, save
    best = run_dir / "best"
    if (best / "trainable.safetensors").exists():
        ckpt.load_trainable(model, best / "trainable.safetensors")
    model.eval()
    # the loop validated the best weights already: their scores are in best/scores.json, or in
    # memory when they are the final weights of a run that keeps no checkpoints
    if (best / "scores.json").exists():
        validation = json.loads((best / "scores.json").read_text())
    else:
        validation = state.best_scores or validate(model)
    with accelerator.autocast():
        test = data.test_scores(model)
    metrics = {
        "method": cfg.method.name, "model": cfg.model, "stopped": reason, "steps": state.step,
        "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
        "validation": validation, "test": test, "skipped_batches": state.skipped_batches,
        "tokens_per_s": state.tokens * accelerator.num_processes / max(state.train_seconds, 1e-9),
        "train_tokens": state.tokens * accelerator.num_processes, "train_seconds": state.train_seconds,
        "peak_memory_mb": peak_memory_mb(), "wall_seconds": time.time() - start, "attention": attention,
        "precision": choice.as_dict(), "threads": threads,
        "train_examples": len(data.train), "dropped_examples": data.dropped, "padding_fraction": data.padding,
        "templates": data.template_ids, "task": data.task,
        "mixture_epoch0": data.realised(0) if data.realised else None,
    }
    _save_output(model, tok, run_dir, cfg.method.peft)
    if accelerator.is_main_process:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if cfg.register_as and cfg.method.peft:
            from instructune.adapters import register_adapter
            register_adapter(cfg.register_as, run_dir / "adapter", task=data.task)
        log(f"done: {run_dir} (test {json.dumps(_headline(test))})")
    accelerator.end_training()
    return TrainResult(metrics, model, tok)


def frozen_linears_to_bf16(model: Any) -> int:
    """Store the weights of frozen linear layers in bf16 for a bf16-autocast run: autocast rounds them
    to bf16 for every matmul anyway, so the results are the same, without an fp32 copy in memory or a
    cast per step. Trainable weights, norms, embeddings and the output layer keep their dtype.
    Returns how many layers were converted."""
    import torch

    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    count = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module is not out and module.weight.dtype == torch.float32
                and not any(p.requires_grad for p in module.parameters())):
            module.to(torch.bfloat16)
            count += 1
    if count:
        _off_the_file_map(model)
    _release_freed_memory()
    return count


def _off_the_file_map(model: Any) -> None:
    """Copy the weights still in the dtype they were loaded in into memory of their own.

    `from_pretrained` maps the safetensors file and its tensors are views of that map; the map, with
    every page read through it (the converted layers' fp32 weights included), stays resident while
    one view lives. With the remaining views copied, the map goes and the resident size drops by the
    fp32 weights the conversion replaced. Parameters keep their identity (the optimiser holds them)
    and tied weights stay tied."""
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen and t.dtype.is_floating_point and t.numel():
            seen.add(id(t))
            t.data = t.data.clone()


def _release_freed_memory() -> None:
    """Hand memory freed on the heap back to the OS (glibc keeps it otherwise), so the dropped fp32
    copies lower the resident size, and its peak, rather than sit in the allocator's free lists."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def adamw(params: list[Any], optim: Any) -> Any:
    """AdamW, with torch's fused kernel (one pass over each tensor's weights, gradients and moments)
    wherever every parameter is a floating-point tensor on a device that has it."""
    import torch
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    fused = all(p.device.type in devices and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas),
                             fused=fused)


def _out_of_memory(e: BaseException) -> bool:
    """torch's GPU OOM, Python's MemoryError, or the CPU allocator's RuntimeError."""
    text = str(e).lower()
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


def _oom_advice(cfg: TrainConfig, precision: str, last: Path | None) -> str:
    """The knobs that trade memory for time, with values worked out from this run's config."""
    knobs = []
    if cfg.batch_size > 1:
        half = cfg.batch_size // 2
        knobs.append(f"batch_size={half} grad_accum={cfg.grad_accum * cfg.batch_size // half} (about the same "
                     "effective batch)")
    if not cfg.gradient_checkpointing:
        knobs.append("gradient_checkpointing=true (recompute activations: less memory, more time)")
    if cfg.method.name == "full":
        knobs.append("method.name=lora (train a small adapter instead of every weight)")
    if precision == "fp32":
        knobs.append("precision=bf16 (half the activation memory; slower on CPUs without bf16 units, see "
                     "`instructune doctor`)")
    knobs.append(f"data.max_length={max(cfg.data.max_length // 2, 16)} (shorter examples)")
    kept = f" The last checkpoint, {last}, is intact (--resume continues it unchanged)." if last else ""
    return (f"out of memory while training {cfg.model} (batch_size={cfg.batch_size}, method {cfg.method.name}, "
            f"{precision}).{kept} To fit, train into a new output_dir with one or more of:\n"
            + "\n".join(f"  - {k}" for k in knobs))


def _check_fsdp(accelerator: Any, log: Any) -> None:
    """Say so when an FSDP launch config ran as DDP; refuse the FSDP settings whose parameters the
    checkpoints cannot name (FSDP1's flattened ones, and activation checkpointing's wrapped ones)."""
    import os

    import accelerate
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type == DistributedType.MULTI_CPU and accelerator.is_main_process:
        log(f"FSDP was asked for, but Accelerate enables FSDP on GPUs only: this run is DDP on CPU (every process "
            f"holds the whole model); for sharding on CPU there is no supported path in Accelerate "
            f"{accelerate.__version__}.")
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise InstructuneError("FSDP1 is not supported: checkpoints and the saved model read FSDP2's sharded "
                               "parameters only. Set fsdp_version: 2 in the Accelerate config (as "
                               "configs/accelerate/fsdp.yaml does).")
    if plugin.activation_checkpointing:
        raise InstructuneError("fsdp_activation_checkpointing is not supported: it renames every layer's "
                               "parameters, which checkpoints cannot match. Set it to false in the Accelerate "
                               "config and use gradient_checkpointing=true in the run config instead.")


def _attention(cfg: TrainConfig, model: Any, device: str) -> str:
    """`cfg.attention`, with auto resolved: recompute on CPU (training/attention.py), except for
    prompt-learning methods, whose batches carry padding masks that kernel hands to sdpa: eager for
    them while the attention weights it keeps for the backward pass (the fp32 softmax and its bf16
    copy, every layer and head) of one micro-batch at data.max_length stay under 1 GiB. sdpa otherwise.
    Measured on the reference CPU (bench/train_throughput.py, bf16, median of 3): recompute trained
    LoRA 3% and full fine-tuning 1% faster than sdpa for up to 2% more peak memory; eager was 3-4% faster
    than recompute for 5-9% more."""
    if cfg.attention != "auto":
        return cfg.attention
    if device != "cpu":
        return "sdpa"
    if not cfg.method.prompt_learning:
        return "recompute"
    c = model.config
    length = cfg.data.max_length + cfg.method.num_virtual_tokens
    kept = cfg.batch_size * c.num_attention_heads * c.num_hidden_layers * length ** 2 * (4 + 2)
    return "eager" if kept <= 2 ** 30 else "sdpa"


def _main_process() -> bool:
    """Rank 0 of a multi-process launch (or a single process): the one that prints the machine lines."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _mixed(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _scheduler(cfg: TrainConfig, optimizer: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.optim.schedule, cfg.optim.schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=min(cfg.optim.warmup_steps, total_steps),
                         num_training_steps=total_steps)


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, main: bool) -> None:
    """Write config.yaml; on resume, refuse a changed config and name the fields that differ."""
    import yaml

    saved = run_dir / "config.yaml"
    current = to_dict(cfg)
    if resume and saved.exists():
        before = yaml.safe_load(saved.read_text())
        diff = sorted(_diff(before, current))
        if diff:
            raise InstructuneError(f"--resume with a changed config: {', '.join(diff)} differ from {saved}. "
                                   "Resume with the same config, or train into a new output_dir.")
    elif not resume and (run_dir / "train_log.jsonl").exists():
        raise InstructuneError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                               "output_dir (output_dir=runs/NAME).")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")  # a kill mid-write must not leave a config that --resume cannot read
        tmp.write_text(yaml.safe_dump(current, sort_keys=False))
        tmp.replace(saved)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} ({a!r} -> {b!r})"]



def _save_output(model: Any, tok: Any, run_dir: Path, peft: bool) -> None:
    """An adapter loadable by peft.PeftModel.from_pretrained, or a full model for transformers.

    Every process calls it and rank 0 writes; FSDP2-sharded weights are gathered to it first."""
    from instructune.training import checkpoint as ckpt

    out = run_dir / ("adapter" if peft else "model")
    state = ckpt.full_state(model) if ckpt.sharded(model) else None  # a collective: before the rank test
    if ckpt.rank() == 0:
        model.save_pretrained(out, state_dict=state)
        tok.save_pretrained(out)


def _headline(scores: dict[str, Any]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}


def load_task_data(cfg: TrainConfig, tok: Any, log: Any) -> Any:
    from instructune.recipes.task_data import TaskData

    return TaskData.build(cfg, tok, log)
