"""What this machine is: CPU class, the CPUs this process may use, and the threads and allocator
settings that follow from them.

Threads: torch would otherwise use the host's core count, which in a container limited by a cgroup
CPU quota oversubscribes the few CPUs it may run on. `setup_threads` uses the CPUs in this
process's affinity mask, capped by the cgroup quota and shared between the local ranks of a
multi-process launch.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from instructune.errors import InstructuneError

ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
"""Environment caps on the instruction sets oneDNN and ATen use (`ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2` emulates an AVX2-only CPU)."""
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The CPU flags that decide the bf16 path."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def capability() -> str:
    """The vector ISA torch's own kernels use here (`AVX2`, `AVX512`, `DEFAULT`, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_class(flags: set[str], torch_capability: str, env: dict[str, str] | None = None) -> str:
    """AMX, AVX512_BF16, AVX512, AVX2 or the torch capability: the best bf16 path the CPU offers,
    capped by `ONEDNN_MAX_CPU_ISA` (oneDNN runs bf16 matmuls) as the environment sets it."""
    env = os.environ if env is None else env
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").upper()
    limit = 3 if not cap or cap == "ALL" or "AMX" in cap else 2 if "BF16" in cap else 1 if "AVX512" in cap else 0
    if "amx_bf16" in flags and limit >= 3:
        return "AMX"
    if "avx512_bf16" in flags and limit >= 2:
        return "AVX512_BF16"
    if "avx512f" in flags and limit >= 1 and torch_capability.upper().startswith("AVX512"):
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return torch_capability or "unknown"


def usable_cpus(affinity: set[int] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup"),
                proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota; and why."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    count = max(len(affinity), 1)
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None and quota < count:
        return max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g} of {count} CPUs in the affinity mask"
    return count, f"{count} CPUs in the affinity mask" + (f", cgroup quota {quota:g}" if quota else "")


def cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (CPUs' worth) over this process's cgroup and its parents, v2 or v1."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: cpu.max holds "QUOTA PERIOD" or "max PERIOD"
            quotas += [_quota(d / "cpu.max", None) for d in _ancestors(root, path)]
        elif "cpu" in controllers.split(","):
            base = root / controllers if (root / controllers).exists() else root / "cpu"
            quotas += [_quota(d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us") for d in _ancestors(base, path)]
    found = [q for q in quotas if q]
    return min(found) if found else None


def _ancestors(base: Path, path: str) -> list[Path]:
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _quota(file: Path, period_file: Path | None) -> float | None:
    try:
        words = file.read_text().split()
        if period_file is not None:
            words = [words[0], period_file.read_text().split()[0]]
    except (OSError, IndexError):
        return None
    try:
        quota, period = float(words[0]), float(words[1])
    except (ValueError, IndexError):
        return None  # "max": no quota
    return quota / period if quota > 0 and period > 0 else None


# --- threads


def local_ranks() -> int:
    """Processes of a multi-process launch on this machine (torchrun and Accelerate set it)."""
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return 1


def choose_threads(requested: int | None, usable: int, ranks: int = 1) -> tuple[int, str | None]:
    """(threads, warning or None): `requested`, else this process's share of the usable CPUs."""
    if requested is None:
        return max(1, usable // ranks), None
    if requested < 1:
        raise InstructuneError(f"threads must be at least 1 (or null for the usable CPUs, {usable} here), got "
                               f"{requested}.")
    share = max(1, usable // ranks)
    if requested > share:
        return requested, (f"threads {requested} is more than the {share} CPU(s) this process may use; "
                           f"oversubscribed cores slow every step: use threads={share} or leave it unset.")
    return requested, None


_threads_set: list[int] = []
"""The thread counts setup_threads has set in this process (it says a count when it changes)."""


def setup_threads(requested: int | None = None, log: Callable[[str], None] | None = print) -> int:
    """Set torch's intra-op threads (and a small inter-op pool); say the choice when it changes. Returns it."""
    usable, why = usable_cpus()
    threads, warning = choose_threads(requested, usable, local_ranks())
    if warning and log:
        log(f"warning: {warning}")
    changed = not _threads_set or torch.get_num_threads() != threads
    torch.set_num_threads(threads)
    _threads_set.append(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op work
        torch.set_num_interop_threads(min(threads, 4))
    if log and changed:
        ranks = local_ranks()
        share = f", shared by {ranks} local processes" if ranks > 1 else ""
        log(f"threads: {threads} ({'as asked' if requested else why + share})")
    return threads


def reuse_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Keep memory freed by tensors in the process for the next ones (glibc only; False elsewhere).

    glibc serves every block over its mmap threshold (32 MiB at most) with a fresh `mmap` and hands
    it back on free, so each step's large gradients (a 49k-word embedding's: 113 MB) fault their
    pages in again, zeroed by the kernel. With mmap off in the main heap (`M_MMAP_MAX` 0) and up to
    `keep_bytes` of free heap kept (`M_TRIM_THRESHOLD`), the next step reuses them. bench/step_levers.py
    measures it (lever `heap`); no result of that lever is kept in bench/results, so no speed-up is
    claimed here. LoRA, whose large tensors are frozen, has no such gradients: its runs leave it off."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, keep_bytes)) and bool(libc.mallopt(-4, 0))  # M_TRIM_THRESHOLD, M_MMAP_MAX
    except (OSError, AttributeError):
        return False
