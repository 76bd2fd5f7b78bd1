"""What a run sets up around the loop: optimiser, schedule, memory choices, out-of-memory advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instructune.training import setup


def test_adamw_is_the_fused_kernel_with_the_given_settings() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = setup.adamw([p], lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9))
    assert opt.defaults["fused"] is True
    assert (opt.defaults["lr"], opt.defaults["weight_decay"], opt.defaults["betas"]) == (1e-3, 0.1, (0.8, 0.9))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_scheduler_warms_up_linearly_then_decays(schedule: str) -> None:
    opt = setup.adamw([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = setup.scheduler(opt, schedule, warmup_steps=4, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert rates[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    if schedule == "constant":
        assert rates[5:] == pytest.approx([1.0] * 5)
    else:  # decaying after the warmup
        assert all(b < a for a, b in zip(rates[4:], rates[5:])) and rates[-1] < 0.5
    # a warmup longer than the run is cut to the run: 4 of 5 warmup steps is 0.8 of the peak, not 0.08
    short = setup.scheduler(setup.adamw([torch.nn.Parameter(torch.ones(1))], lr=1.0), schedule, 50, 5)
    assert short.lr_lambdas[0](4) == pytest.approx(0.8)


def test_large_trainable_tensors_are_recognised() -> None:
    big = torch.nn.Linear(4096, 2049)  # 8.4M floats = 33.6 MB: over glibc's largest mmap threshold
    assert setup.has_large_trainable(big)
    big.requires_grad_(False)
    assert not setup.has_large_trainable(big)
    assert not setup.has_large_trainable(torch.nn.Linear(64, 64))


def test_oom_advice_works_out_the_values() -> None:
    text = setup.oom_advice("m", "full", "fp32", batch_size=8, grad_accum=2, max_length=256,
                            gradient_checkpointing=False, last=Path("runs/x/checkpoint-00000040"))
    assert text.startswith("out of memory while training m (batch_size=8, method full, fp32)")
    for knob in ("batch_size=4 grad_accum=4", "gradient_checkpointing=true", "method.name=lora", "precision=bf16",
                 "data.max_length=128", "checkpoint-00000040"):
        assert knob in text, knob
    lean = setup.oom_advice("m", "lora", "bf16", batch_size=1, grad_accum=1, max_length=16,
                            gradient_checkpointing=True, last=None)
    knobs = lean.split("one or more of:")[1]
    assert "batch_size=" not in knobs and "method.name" not in knobs and "precision=" not in knobs
    assert "data.max_length=16" in lean and "intact" not in lean


def test_out_of_memory_is_told_apart_from_other_errors() -> None:
    assert setup.is_out_of_memory(MemoryError())
    assert setup.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not setup.is_out_of_memory(RuntimeError("shape mismatch"))
