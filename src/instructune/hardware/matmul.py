"""The matmul probe behind `precision: auto`: fp32 against bf16 autocast at the model's own shapes,
interleaved, medians deciding, cached per machine only when measured cleanly (see `precision` for
the rule and the choice it makes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import torch
from filelock import FileLock, Timeout

from instructune.errors import InstructuneError
from instructune.files import write_text_atomic
from instructune.hardware.cpu import (
    BF16_FLAGS,
    ISA_ENV,
    capability,
    cpu_flags,
    cpu_model,
)
from instructune.models import resolve_model
from instructune.types import JSON

BF16_MARGIN = 1.15
"""bf16 must beat fp32 by this factor to be chosen: a near-tie is not worth bf16's rounding."""
PROBE_TOKENS = 128
"""Rows of the probe's matmuls (tokens of a small batch)."""
DEFAULT_SHAPES = ((PROBE_TOKENS, 576, 576), (PROBE_TOKENS, 576, 1536))
"""Probe shapes when the model's are unknown (SmolLM2-135M's hidden and MLP sizes)."""
PROBE_ROUNDS = 5
"""Repetitions of each precision, interleaved (fp32, bf16, fp32, bf16, ...): other work that slows some
of them slows both sides alike, and the medians ignore the few it hits hardest."""
PROBE_VERSION = 2
"""Part of the cache key, bumped when the probe's method changes so older results are measured again
(1: all fp32, then all bf16, best of each, load not recorded)."""
LOAD_LIMIT = 0.25
"""A result is cached only where others' load before the probe is at most this per CPU: one other busy
thread on a 2-CPU machine (0.5 per CPU) contends with a 2-thread matmul's threads, and is refused."""
CACHE_FILE = "hardware.json"
MAX_GFLOPS_PER_CPU = 10_000.0
"""A cached speed above this per online CPU is not believed: AMX peaks near 4,000 bf16 GFLOP/s a core."""
RATIO_RANGE = (0.001, 20.0)
"""Plausible bf16/fp32 speed ratios: emulated bf16 runs ~40x slower, AMX ~5-10x faster; a cached ratio
outside this range is a forged or broken entry, not a measurement."""
Shape = tuple[int, int, int]


@dataclass
class Probe:
    """fp32 and bf16-autocast matmul speed on this machine, and how far to trust it."""

    fp32_gflops: float
    """Median GFLOP/s of the fp32 repetitions."""
    bf16_gflops: float
    """Median GFLOP/s of the bf16-autocast repetitions."""
    threads: int
    shapes: list[list[int]]
    seconds: float
    cached: bool = False
    error: str | None = None
    fp32_runs: list[float] = field(default_factory=list)
    """GFLOP/s of each fp32 repetition, in the order measured (each followed by a bf16 one)."""
    bf16_runs: list[float] = field(default_factory=list)
    fp32_spread: float = 0.0
    """Interquartile range of the fp32 repetitions over their median (0.03: 3%)."""
    bf16_spread: float = 0.0
    fp32_of_peak: float = 0.0
    """Median over the best fp32 repetition: how near the typical repetition came to this machine's best."""
    bf16_of_peak: float = 0.0
    load: float | None = None
    """The 1-minute load average before the probe less this process's own share (None: the OS keeps none)."""
    cpus: int = 0
    """The online CPUs that load is spread over (the load average counts the whole host)."""
    measured: str = ""
    """When, local time: `2026-12-07 19:50:12`."""

    @property
    def ratio(self) -> float:
        """bf16 speed over fp32 speed (above 1: bf16 faster)."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0

    @property
    def ratio_band(self) -> tuple[float, float]:
        """bf16/fp32 within the repetitions' noise: from bf16's lower quartile over fp32's upper one to
        bf16's upper quartile over fp32's lower one."""
        if not self.fp32_runs or not self.bf16_runs:
            return self.ratio, self.ratio
        (f_low, _, f_high), (b_low, _, b_high) = _quartiles(self.fp32_runs), _quartiles(self.bf16_runs)
        return b_low / f_high, b_high / f_low

    def near_tie(self, margin: float = BF16_MARGIN) -> bool:
        """Whether the noise band reaches across the margin: the repetitions could decide either way."""
        low, high = self.ratio_band
        return low < margin <= high

    def under_load(self, limit: float = LOAD_LIMIT) -> bool:
        return self.load is not None and self.cpus > 0 and self.load / self.cpus > limit

    @property
    def precision(self) -> str:
        """What the probe supports: bf16 only where clearly faster and clear of the margin's noise."""
        return "fp32" if self.error or self.near_tie() else decide(self.fp32_gflops, self.bf16_gflops)

    def doubts(self) -> list[str]:
        """Why this result serves this process only and is not cached (none: it is kept)."""
        out = []
        if self.near_tie():
            out.append(f"near-tie: bf16/fp32 {self.ratio:.2f} within the noise of the {BF16_MARGIN:.2f} margin; fp32")
        if self.under_load():
            out.append(f"measured under load {self.load:.2f} on {self.cpus} CPUs")
        return out


def matmul_gflops(shapes: tuple[Shape, ...] | list[Shape], bf16: bool, budget_s: float = 0.015) -> float:
    """GFLOP/s of `x @ w.T` at each (tokens, in, out) shape, fp32 or under bf16 autocast: one repetition
    of the probe (best of the calls that fit `budget_s` per shape; one suffices where a call takes longer)."""
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


def model_shapes(config: object) -> tuple[Shape, ...]:
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


def machine_key(threads: int, shapes: tuple[Shape, ...] | list[Shape]) -> JSON:
    """What a probe result depends on; its hash names the cache entry."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "flags": sorted(f for f in BF16_FLAGS if f in flags), "capability": capability(),
            "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}, "cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "shapes": [list(s) for s in shapes],
            "probe": PROBE_VERSION}


def key_hash(key: JSON) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


_this_process: dict[tuple[str, str], Probe] = {}
"""Results not cached (a near-tie, measured under load, an unwritable cache), by cache file and key:
this process keeps using its own measurement; the next process measures again."""


def probe(shapes: tuple[Shape, ...] | list[Shape] = DEFAULT_SHAPES, fresh: bool = False,
          measure: Callable[..., float] | None = None, log: Callable[[str], None] | None = print) -> Probe:
    """fp32 and bf16-autocast matmul speed at `shapes` with the current threads; cached per machine when
    clean (`Probe.doubts` is empty). `fresh` measures again and forgets the cached result.
    `measure(shapes, bf16=...) -> GFLOP/s` replaces one repetition's timing (tests inject theirs)."""
    measure = measure or matmul_gflops
    key = machine_key(torch.get_num_threads(), shapes)
    digest = key_hash(key)
    path = Path(os.environ.get("INSTRUCTUNE_HOME") or Path.home() / ".cache" / "instructune") / CACHE_FILE
    mine = (str(path), digest)
    if not fresh and mine in _this_process:
        return _this_process[mine]
    _this_process.pop(mine, None)
    result = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=120):  # the first process measures, the others read
            cache = _read_cache(path, log)
            if not fresh and (hit := _cached(cache.get(digest), f"{path} entry {digest}", log)):
                return hit
            result = _measure(shapes, measure)
            if result.error is None and not result.doubts():
                cache[digest] = {"key": key, "probe": asdict(result), "measured": result.measured}
                _write_cache(path, cache)
            elif result.error is None:
                _this_process[mine] = result
                if cache.pop(digest, None) is not None:  # a re-probe forgets the result it doubts
                    _write_cache(path, cache)
            return result
    except (OSError, Timeout) as e:
        if log:
            log(f"warning: the probe cache {path} is not usable ({getattr(e, 'strerror', None) or e}); the result "
                "is not kept. Make $INSTRUCTUNE_HOME writable to keep it.")
        result = result or _measure(shapes, measure)
        if result.error is None:
            _this_process[mine] = result
        return result


def _measure(shapes: tuple[Shape, ...] | list[Shape], measure: Callable[..., float]) -> Probe:
    """PROBE_ROUNDS rounds of fp32 then bf16, interleaved so that other work slows both sides alike."""
    load, cpus = background_load()  # read before the probe: its own threads would count in a later reading
    measured, start = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    runs: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(PROBE_ROUNDS):
            for bf16 in (False, True):
                runs[bf16].append(float(measure(shapes, bf16=bf16)))
        every = runs[False] + runs[True]
        error = None if all(v > 0 and math.isfinite(v) for v in every) else "non-positive timing"
    except Exception as e:  # noqa: BLE001 (any failure of the probe means: no evidence for bf16)
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    common = {"threads": torch.get_num_threads(), "shapes": [list(s) for s in shapes], "load": load,
              "cpus": cpus, "measured": measured, "seconds": time.perf_counter() - start}
    if error:
        return Probe(0.0, 0.0, error=error, **common)
    fp32, bf16 = runs[False], runs[True]
    fp32_median, bf16_median = statistics.median(fp32), statistics.median(bf16)
    return Probe(fp32_median, bf16_median, fp32_runs=fp32, bf16_runs=bf16, fp32_spread=_spread(fp32),
                 bf16_spread=_spread(bf16), fp32_of_peak=fp32_median / max(fp32),
                 bf16_of_peak=bf16_median / max(bf16), **common)


def _quartiles(runs: list[float]) -> tuple[float, float, float]:
    if len(runs) < 2:
        return runs[0], runs[0], runs[0]
    low, mid, high = statistics.quantiles(runs, n=4, method="inclusive")
    return low, mid, high


def _spread(runs: list[float]) -> float:
    """Interquartile range over the median: robust to the one repetition a burst of other work hits."""
    low, mid, high = _quartiles(runs)
    return (high - low) / mid


def background_load() -> tuple[float | None, int]:
    """Others' load now: the 1-minute load average less this process's own share, and the online CPUs
    it is spread over (the load average counts the whole host, a container's included).

    The load average is an exponential average (time constant 60 s) of runnable threads, so a process
    that kept k threads busy through its t seconds adds k * (1 - exp(-t / 60)); k is its CPU seconds
    over t. None where the OS keeps no load average."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None, cpus
    age = _process_age()
    busy = sum(os.times()[:2]) / age if age > 0 else 0.0
    return max(0.0, load - busy * (1 - math.exp(-age / 60))), cpus


def _process_age() -> float:
    """Seconds since this process started (Linux; 0 elsewhere, which counts none of the load as its own)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _cached(entry: object, where: str, log: Callable[[str], None] | None) -> Probe | None:
    """The probe of a cache entry; None for no entry, or for one that does not parse or fails a sanity
    check (measured again, said in one warning line: on stderr where `log` is None, as a broken file is
    never silent)."""
    if entry is None:
        return None
    why = _entry_problem(entry)
    if why is None:
        return Probe(**{**entry["probe"], "cached": True})
    (log or _stderr)(f"warning: the probe cache {where} is not believed ({why}); measuring again.")
    return None


def _entry_problem(entry: object) -> str | None:
    """Why a cache entry is not believed (None: it parses and is plausible on this machine)."""
    got = entry.get("probe") if isinstance(entry, dict) else None
    if not isinstance(got, dict):
        return f"not an object with a 'probe' object: {str(entry)[:80]}"
    names = {f.name for f in fields(Probe)}
    if unknown := sorted(set(got) - names):
        return f"unknown field {unknown[0]!r}"
    if missing := [n for n in ("fp32_gflops", "bf16_gflops", "threads", "shapes", "seconds") if n not in got]:
        return f"missing field {missing[0]!r}"
    if bad := [n for n, ok in _FIELD_CHECKS.items() if n in got and not ok(got[n])]:
        return f"{bad[0]} is {str(got[bad[0]])[:80]}"
    return _speed_problem(got)


def _speed_problem(got: JSON) -> str | None:
    """Speeds finite, positive, below what this machine could do; bf16/fp32 plausible; medians of the runs."""
    ceiling = MAX_GFLOPS_PER_CPU * (os.cpu_count() or 1)
    runs = {"fp32": got.get("fp32_runs", []), "bf16": got.get("bf16_runs", [])}
    if not all(isinstance(r, list) for r in runs.values()):
        return "fp32_runs and bf16_runs must be lists of GFLOP/s"
    speeds = [got["fp32_gflops"], got["bf16_gflops"], *runs["fp32"], *runs["bf16"]]
    if bad := [v for v in speeds if not (_finite(v) and 0 < v <= ceiling)]:
        return f"a speed of {str(bad[0])[:40]} GFLOP/s; believable speeds are finite, above 0 and at most {ceiling:.0f}"
    ratio = got["bf16_gflops"] / got["fp32_gflops"]
    if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
        return f"bf16/fp32 {ratio:.4g}, outside the plausible {RATIO_RANGE[0]:g} to {RATIO_RANGE[1]:g}"
    for side, values in runs.items():
        if values and not math.isclose(statistics.median(values), got[f"{side}_gflops"], rel_tol=1e-9):
            return f"{side}_gflops is not the median of {side}_runs"
    return None


def _finite(v: object) -> bool:
    """A real number (bool is not one) that is neither NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_FIELD_CHECKS: dict[str, Callable[[object], bool]] = {
    "threads": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "cpus": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "shapes": lambda v: isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                    for d in s) for s in v),
    "load": lambda v: v is None or (_finite(v) and v >= 0),
    "measured": lambda v: isinstance(v, str),
    "cached": lambda v: isinstance(v, bool),
    "error": lambda v: v is None,  # only clean results are cached
    **{n: lambda v: _finite(v) and v >= 0 for n in ("seconds", "fp32_spread", "bf16_spread", "fp32_of_peak",
                                                    "bf16_of_peak")},
}
"""Each field of a cached Probe besides the speeds, and what a believable value is."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _read_cache(path: Path, log: Callable[[str], None] | None) -> JSON:
    """The cache's entries by key hash; a file that is not a JSON object is said once and measured over."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        return data
    (log or _stderr)(f"warning: the probe cache {path} is not a JSON object; measuring again.")
    return {}


def _write_cache(path: Path, cache: JSON) -> None:
    write_text_atomic(path, json.dumps(cache, indent=1))


# --- the precision decision


def decide(fp32_gflops: float, bf16_gflops: float, margin: float = BF16_MARGIN) -> str:
    """bf16 only where it is clearly faster than fp32."""
    return "bf16" if fp32_gflops > 0 and bf16_gflops >= margin * fp32_gflops else "fp32"
