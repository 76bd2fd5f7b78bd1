"""What a training run sets up around the loop: the engine, optimiser and schedule, memory, and the
advice an out-of-memory run gets. Each piece takes plain arguments, not the run's config."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
from pathlib import Path

import accelerate
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.optim.optimizer import _get_fused_kernels_supported_devices
from transformers import get_scheduler

from instructune.errors import InstructuneError
from instructune.types import Log

LARGE_TENSOR_BYTES = 32 << 20
"""Above this size glibc maps every allocation afresh (see hardware.reuse_freed_memory)."""


def main_process() -> bool:
    """Rank 0 of a multi-process launch (or a single process): the one that prints."""
    return os.environ.get("RANK", "0") == "0"


def launch_note() -> str | None:
    """What to say about how the processes of this run were launched (None: nothing to say).

    `accelerate launch --num_processes N` starts one process on a CPU (Accelerate runs multi-process CPU
    jobs through mpirun and a host file): the run would silently be single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return f"distributed: {world} processes ({'gloo on CPU' if not torch.cuda.is_available() else 'GPUs'})"
    if os.environ.get("ACCELERATE_MIXED_PRECISION") and os.environ.get("MASTER_ADDR"):
        return ("warning: accelerate launch asked for several processes, but on a CPU it started one: this run is a "
                "single process. For several processes on one machine use torchrun: torchrun --nproc_per_node 2 "
                "-m instructune train CONFIG.yaml")
    return None


def accelerator(precision: str) -> Accelerator:
    """A fresh Accelerate engine in `precision` (fp32, bf16 or fp16 autocast), so runs of different
    precisions can share one process (the process-level state, which holds the distributed setup, is kept)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed)


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel (one pass over each tensor's weights, gradients and moments)
    wherever every parameter is a floating-point tensor on a device that has it."""
    devices = set(_get_fused_kernels_supported_devices())
    fused = all(p.device.type in devices and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused)


def scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int,
              total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup to the peak rate, then linear, cosine or constant."""
    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=min(warmup_steps, total_steps),
                         num_training_steps=total_steps)


def has_large_trainable(model: torch.nn.Module) -> bool:
    """Whether a trainable tensor is large enough that its gradient is mapped afresh every step."""
    return any(p.requires_grad and p.numel() * p.element_size() > LARGE_TENSOR_BYTES for p in model.parameters())


def frozen_linears_to_bf16(model: torch.nn.Module) -> int:
    """Store the weights of frozen linear layers in bf16 for a bf16-autocast run: autocast rounds them
    to bf16 for every matmul anyway, so the results are the same, without an fp32 copy in memory or a
    cast per step. Trainable weights, norms, embeddings and the output layer keep their dtype.
    Returns how many layers were converted."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    count = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module is not out and module.weight.dtype == torch.float32
                and not any(p.requires_grad for p in module.parameters())):
            module.to(torch.bfloat16)
            count += 1
    if count:
        off_the_file_map(model)
    release_freed_memory()
    return count


def off_the_file_map(model: torch.nn.Module) -> None:
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


def release_freed_memory() -> None:
    """Hand memory freed on the heap back to the OS (glibc keeps it otherwise), so the dropped fp32
    copies lower the resident size, and its peak, rather than sit in the allocator's free lists."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def check_fsdp(engine: Accelerator, log: Log) -> None:
    """Say so when an FSDP launch config ran as DDP; refuse the FSDP settings whose parameters the
    checkpoints cannot name (FSDP1's flattened ones, and activation checkpointing's wrapped ones)."""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and engine.distributed_type == DistributedType.MULTI_CPU and engine.is_main_process:
        log(f"FSDP was asked for, but Accelerate enables FSDP on GPUs only: this run is DDP on CPU (every process "
            f"holds the whole model); for sharding on CPU there is no supported path in Accelerate "
            f"{accelerate.__version__}.")
    if engine.distributed_type != DistributedType.FSDP:
        return
    plugin = engine.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise InstructuneError("FSDP1 is not supported: checkpoints and the saved model read FSDP2's sharded "
                               "parameters only. Set fsdp_version: 2 in the Accelerate config (as "
                               "configs/accelerate/fsdp.yaml does).")
    if plugin.activation_checkpointing:
        raise InstructuneError("fsdp_activation_checkpointing is not supported: it renames every layer's "
                               "parameters, which checkpoints cannot match. Set it to false in the Accelerate "
                               "config and use gradient_checkpointing=true in the run config instead.")


def is_out_of_memory(e: BaseException) -> bool:
    """torch's GPU OOM, Python's MemoryError, or the CPU allocator's RuntimeError."""
    text = str(e).lower()
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


def oom_advice(model: str, method: str, precision: str, batch_size: int, grad_accum: int, max_length: int,
               gradient_checkpointing: bool, last: Path | None) -> str:
    """The knobs that trade memory for time, with values worked out from the run's settings."""
    knobs = []
    if batch_size > 1:
        half = batch_size // 2
        knobs.append(f"batch_size={half} grad_accum={grad_accum * batch_size // half} (about the same "
                     "effective batch)")
    if not gradient_checkpointing:
        knobs.append("gradient_checkpointing=true (recompute activations: less memory, more time)")
    if method == "full":
        knobs.append("method.name=lora (train a small adapter instead of every weight)")
    if precision == "fp32":
        knobs.append("precision=bf16 (half the activation memory; slower on CPUs without bf16 units, see "
                     "`instructune doctor`)")
    knobs.append(f"data.max_length={max(max_length // 2, 16)} (shorter examples)")
    kept = f" The last checkpoint, {last}, is intact (--resume continues it unchanged)." if last else ""
    return (f"out of memory while training {model} (batch_size={batch_size}, method {method}, "
            f"{precision}).{kept} To fit, train into a new output_dir with one or more of:\n"
            + "\n".join(f"  - {k}" for k in knobs))


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
