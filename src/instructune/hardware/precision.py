"""`precision: auto`, measured: fp32 against bf16 autocast at the model's own shapes, on this CPU.

CPUs differ more than one default can cover: with AMX or AVX-512 bf16 units a bf16 matmul runs
faster than fp32, and on an AVX2-only CPU bf16 is emulated and runs several times *slower* (the
measured figures, each from a committed bench/results file, are in docs/hardware.md). So
`precision: auto` (the default everywhere) times matmuls at the model's own shapes, fp32 against
bf16 autocast, in PROBE_ROUNDS interleaved rounds (fp32, bf16, fp32, bf16, ...), and on the
medians picks bf16 only where it is clearly faster:

    bf16 if median(bf16) >= BF16_MARGIN * median(fp32) and the noise band clears the margin else fp32

The noise band is the ratio between the repetitions' quartiles (lower bf16 / upper fp32 to upper
bf16 / lower fp32); a band that reaches across the margin is a near-tie, and a near-tie is fp32.

The probe takes a fraction of a second and is cached per machine (CPU model, its bf16-relevant
flags, torch's capability and the oneDNN/ATen ISA caps in the environment, threads, torch
version, shapes, probe method) in `$INSTRUCTUNE_HOME/hardware.json`, so every process of a study
decides alike, with when it was measured, the load before it, the spread of its repetitions and
their fraction of the best one. Only a clean result is cached: a near-tie, or one measured while
other work kept the CPUs busy (the 1-minute load average before the probe, less this process's
own share, above LOAD_LIMIT per CPU), serves this process only and the next one measures again.
`INSTRUCTUNE_AUTO_PRECISION=fp32|bf16` fixes what auto means instead (reproducible comparisons
across machines; the test suite sets it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from instructune.errors import InstructuneError
from instructune.hardware.cpu import capability, cpu_class, cpu_flags
from instructune.hardware.matmul import DEFAULT_SHAPES, Shape, decide, probe, shapes_of
from instructune.types import JSON


@dataclass
class PrecisionChoice:
    requested: str
    """What the config asked for: auto, fp32, bf16 or fp16."""
    precision: str
    """What runs: fp32, bf16 (autocast) or fp16 (autocast, GPU only)."""
    device: str
    cpu_class: str
    reason: str
    """One line: the choice and the measured figures behind it."""
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None

    @property
    def dtype(self) -> str:
        """The evaluation/generation dtype name of this precision (fp16 scores in fp32)."""
        return "bfloat16" if self.precision == "bf16" else "float32"

    def as_dict(self) -> JSON:
        return asdict(self)


def resolve_precision(requested: str, shapes: tuple[Shape, ...] | list[Shape] = DEFAULT_SHAPES,
                      device: str | None = None, log: Callable[[str], None] | None = print,
                      measure: Callable[..., float] | None = None) -> PrecisionChoice:
    """`auto` made concrete for this machine (or an explicit precision checked against it), said in one line."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu":
        return _gpu_precision(requested, device, log)
    klass = cpu_class(cpu_flags(), capability())
    if requested == "fp16":
        raise InstructuneError("precision fp16 needs a GPU (on a CPU fp16 autocast has no fast kernels and no loss "
                               "scaling); use precision=auto, fp32 or bf16.")
    if requested == "auto" and (fixed := os.environ.get("INSTRUCTUNE_AUTO_PRECISION")):
        if fixed not in ("fp32", "bf16"):
            raise InstructuneError(f"INSTRUCTUNE_AUTO_PRECISION={fixed!r}: use fp32 or bf16, or unset it to measure.")
        return _said(PrecisionChoice("auto", fixed, device, klass,
                                     f"precision auto -> {fixed} (INSTRUCTUNE_AUTO_PRECISION)"), log)
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32", device, klass, "precision fp32 (as configured)")
    p = probe(shapes, measure=measure, log=log)
    figures = f"bf16 matmul {p.bf16_gflops:.1f} GFLOP/s vs fp32 {p.fp32_gflops:.1f} on this CPU ({klass})"
    if requested == "bf16":
        if p.error:
            raise InstructuneError(f"precision bf16: this CPU could not run a bf16 matmul ({p.error}); use "
                                   "precision=auto or fp32.")
        choice = PrecisionChoice("bf16", "bf16", device, klass, f"precision bf16 (as configured): {figures}",
                                 p.fp32_gflops, p.bf16_gflops)
        if decide(p.fp32_gflops, p.bf16_gflops) == "fp32" and log:
            slow = f"{1 / p.ratio:.1f}x slower than" if p.ratio < 1 else f"only {p.ratio:.2f}x as fast as"
            log(f"warning: precision bf16 on this CPU ({klass}): bf16 matmuls measured {slow} fp32 "
                f"({p.bf16_gflops:.1f} vs {p.fp32_gflops:.1f} GFLOP/s); precision=auto or fp32 runs faster here.")
        return choice
    if p.error:
        return _said(PrecisionChoice("auto", "fp32", device, klass,
                                     f"precision auto -> fp32: the bf16 probe failed ({p.error})"), log)
    doubts = "".join(f"; {d}" for d in p.doubts()) + ("; not kept" if p.doubts() else "")
    return _said(PrecisionChoice("auto", p.precision, device, klass, f"precision auto -> {p.precision}: {figures}"
                                 + doubts + (" (cached)" if p.cached else ""), p.fp32_gflops, p.bf16_gflops), log)


def _gpu_precision(requested: str, device: str, log: Callable[[str], None] | None) -> PrecisionChoice:
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    name = torch.cuda.get_device_name() if device == "cuda" else device
    if requested == "bf16" and not bf16_ok:
        raise InstructuneError(f"precision bf16: {name} has no bf16 support; use precision=auto (fp16 there) or "
                               "fp32.")
    if requested != "auto":
        return PrecisionChoice(requested, requested, device, name, f"precision {requested} (as configured)")
    chosen = "bf16" if bf16_ok else "fp16"
    return _said(PrecisionChoice("auto", chosen, device, name,
                                 f"precision auto -> {chosen}: {name} {'supports' if bf16_ok else 'lacks'} bf16"), log)


_said_lines: set[str] = set()
"""Precision lines said in this process: each is said once (a study resolves auto many times)."""


def _said(choice: PrecisionChoice, log: Callable[[str], None] | None) -> PrecisionChoice:
    line = choice.reason.removesuffix(" (cached)")
    if log and line not in _said_lines:
        _said_lines.add(line)
        log(choice.reason)
    return choice


def eval_dtype(precision: str, model: str, log: Callable[[str], None] | None = print) -> str:
    """The evaluation/generation dtype (float32 or bfloat16) of a precision or dtype name (auto, fp32,
    bf16, fp16, float32, bfloat16) for `model` on this machine; fp16 runs score in fp32."""
    named = {"fp32": "float32", "fp16": "float32", "bf16": "bfloat16", "float32": "float32", "bfloat16": "bfloat16"}
    if precision in named:
        return named[precision]
    return resolve_precision(precision, shapes_of(model), log=log).dtype
