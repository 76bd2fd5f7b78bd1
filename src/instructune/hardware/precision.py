"""`precision: auto`, measured: fp32 against bf16 autocast at the model's own shapes, on this CPU.

CPUs differ more than one default can cover: with AMX a bf16 matmul runs ~5x faster than fp32,
with AVX-512 bf16 units ~2x, and on an AVX2-only CPU bf16 is emulated and runs 8-75x *slower*.
So `precision: auto` (the default everywhere) times matmuls at the model's own shapes, fp32
against bf16 autocast, and picks bf16 only where it is clearly faster:

    bf16 if bf16_gflops >= BF16_MARGIN * fp32_gflops else fp32

The probe takes a fraction of a second and is cached per machine (CPU model, its bf16-relevant
flags, torch's capability and the oneDNN/ATen ISA caps in the environment, threads, torch
version, shapes) in `$INSTRUCTUNE_HOME/hardware.json`, so every process of a study decides alike.
`INSTRUCTUNE_AUTO_PRECISION=fp32|bf16` fixes what auto means instead (reproducible comparisons
across machines; the test suite sets it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from filelock import FileLock, Timeout

from instructune.errors import InstructuneError
from instructune.hardware.cpu import (
    BF16_FLAGS,
    ISA_ENV,
    capability,
    cpu_class,
    cpu_flags,
    cpu_model,
    usable_cpus,
)
from instructune.models import resolve_model

BF16_MARGIN = 1.15
"""bf16 must beat fp32 by this factor to be chosen: a near-tie is not worth bf16's rounding."""
PROBE_TOKENS = 128
"""Rows of the probe's matmuls (tokens of a small batch)."""
DEFAULT_SHAPES = ((PROBE_TOKENS, 576, 576), (PROBE_TOKENS, 576, 1536))
"""Probe shapes when the model's are unknown (SmolLM2-135M's hidden and MLP sizes)."""
CACHE_FILE = "hardware.json"
Shape = tuple[int, int, int]


@dataclass
class Probe:
    fp32_gflops: float
    bf16_gflops: float
    threads: int
    shapes: list[list[int]]
    seconds: float
    cached: bool = False
    error: str | None = None

    @property
    def ratio(self) -> float:
        """bf16 speed over fp32 speed (above 1: bf16 faster)."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0


def matmul_gflops(shapes: tuple[Shape, ...] | list[Shape], bf16: bool, budget_s: float = 0.08) -> float:
    """GFLOP/s of `x @ w.T` at each (tokens, in, out) shape, fp32 or under bf16 autocast (best of a
    few calls after a warm-up; one call suffices where a single call takes longer than the budget)."""
    flops = seconds = 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx, torch.no_grad():
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = time.perf_counter() - t0
            spent = best
            while spent < budget_s and best < budget_s / 2:
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                took = time.perf_counter() - t0
                best, spent = min(best, took), spent + took
        flops += 2 * m * k * n
        seconds += max(best, 1e-9)
    return flops / seconds / 1e9


def model_shapes(config: Any) -> tuple[Shape, ...]:
    """The probe's shapes for a model config: its attention projection and its MLP up-projection."""
    hidden = getattr(config, "hidden_size", None)
    mlp = getattr(config, "intermediate_size", None) or (4 * hidden if hidden else None)
    if not hidden:
        return DEFAULT_SHAPES
    return ((PROBE_TOKENS, hidden, hidden), (PROBE_TOKENS, hidden, mlp))


def shapes_of(model: str) -> tuple[Shape, ...]:
    """Probe shapes of a model pack, folder or hub id, read from its config.json (no weights loaded)."""
    with contextlib.suppress(InstructuneError, OSError, ValueError):
        path = Path(resolve_model(model)) / "config.json"
        if path.exists():
            cfg = json.loads(path.read_text())
            cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
            return model_shapes(SimpleNamespace(**cfg))
    return DEFAULT_SHAPES


def machine_key(threads: int, shapes: tuple[Shape, ...] | list[Shape]) -> dict[str, Any]:
    """What a probe result depends on; its hash names the cache entry."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "flags": sorted(f for f in BF16_FLAGS if f in flags), "capability": capability(),
            "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}, "cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "shapes": [list(s) for s in shapes]}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def probe(shapes: tuple[Shape, ...] | list[Shape] = DEFAULT_SHAPES, fresh: bool = False,
          measure: Callable[..., float] | None = None, log: Callable[[str], None] | None = print) -> Probe:
    """fp32 and bf16-autocast matmul speed at `shapes` with the current threads; cached per machine.
    `measure(shapes, bf16=...) -> GFLOP/s` replaces the timing (tests inject theirs)."""
    measure = measure or matmul_gflops
    key = machine_key(torch.get_num_threads(), shapes)
    digest = key_hash(key)
    path = Path(os.environ.get("INSTRUCTUNE_HOME") or Path.home() / ".cache" / "instructune") / CACHE_FILE
    result = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=120):  # the first process measures, the others read
            cache = _read_cache(path)
            if not fresh and digest in cache:
                return Probe(**{**cache[digest]["probe"], "cached": True})
            result = _measure(shapes, measure)
            if result.error is None:
                cache[digest] = {"key": key, "probe": asdict(result), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
                _write_cache(path, cache)
            return result
    except (OSError, Timeout) as e:
        if log:
            log(f"warning: the probe cache {path} is not usable ({getattr(e, 'strerror', None) or e}); the result "
                "is not kept. Make $INSTRUCTUNE_HOME writable to keep it.")
        return result or _measure(shapes, measure)


def _measure(shapes: tuple[Shape, ...] | list[Shape], measure: Callable[..., float]) -> Probe:
    start = time.perf_counter()
    try:
        fp32, bf16 = measure(shapes, bf16=False), measure(shapes, bf16=True)
        error = None if fp32 > 0 and bf16 > 0 and math.isfinite(fp32 + bf16) else "non-positive timing"
    except Exception as e:  # noqa: BLE001 (any failure of the probe means: no evidence for bf16)
        fp32, bf16, error = 0.0, 0.0, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return Probe(fp32, bf16, torch.get_num_threads(), [list(s) for s in shapes], time.perf_counter() - start,
                 error=error)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(path)


# --- the precision decision


def decide(fp32_gflops: float, bf16_gflops: float, margin: float = BF16_MARGIN) -> str:
    """bf16 only where it is clearly faster than fp32."""
    return "bf16" if fp32_gflops > 0 and bf16_gflops >= margin * fp32_gflops else "fp32"


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

    def as_dict(self) -> dict[str, Any]:
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
    chosen = decide(p.fp32_gflops, p.bf16_gflops)
    return _said(PrecisionChoice("auto", chosen, device, klass, f"precision auto -> {chosen}: {figures}"
                                 + (" (cached)" if p.cached else ""), p.fp32_gflops, p.bf16_gflops), log)


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


def machine_summary(shapes: tuple[Shape, ...] | list[Shape] = DEFAULT_SHAPES, fresh: bool = True) -> dict[str, Any]:
    """The CPU class a speed figure was measured on, for benchmark results: CPU, class, threads, and
    fp32 and bf16-autocast matmul speed at `shapes` (measured afresh by default)."""
    flags = cpu_flags()
    p = probe(shapes, fresh=fresh, log=None)
    return {"cpu": cpu_model(), "cpu_class": cpu_class(flags, capability()), "torch_capability": capability(),
            "flags": [f for f in BF16_FLAGS if f in flags], "isa_env": {k: os.environ[k] for k in ISA_ENV
                                                                        if k in os.environ},
            "cores_usable": usable_cpus()[0], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "probe_shapes": p.shapes, "fp32_gflops": p.fp32_gflops, "bf16_gflops": p.bf16_gflops,
            "auto_precision": "fp32" if p.error else decide(p.fp32_gflops, p.bf16_gflops)}


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a results file: `AMD EPYC, CPU class AVX2, 2 threads; matmul at the model's shapes
    fp32 157 GFLOP/s, bf16 autocast 20 (auto picks fp32)`."""
    isa = "".join(f", {k}={v}" for k, v in m.get("isa_env", {}).items())
    return (f"{m['cpu']}, CPU class {m['cpu_class']}{isa}, {m['threads']} threads, torch {m['torch']}; matmul at "
            f"the model's shapes: fp32 {m['fp32_gflops']:.0f} GFLOP/s, bf16 autocast {m['bf16_gflops']:.0f} "
            f"(auto picks {m['auto_precision']})")


def results_stem(stem: str, machine: dict[str, Any]) -> str:
    """A benchmark's results file name for the CPU class it ran on: `train_throughput_avx2`."""
    return f"{stem}_{machine['cpu_class'].lower()}"


def write_results(out: Path, name: str, result: dict[str, Any], markdown: str) -> Path:
    """A benchmark's results for the CPU class it ran on (`result["machine"]`): everything as
    `<name>_<class>.json`, the table as `<name>_<class>.md`, which is also printed. Returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(name, result["machine"])
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")
    print(markdown.rstrip("\n"))
    return out / f"{stem}.md"
