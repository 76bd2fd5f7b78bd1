"""`instructune doctor [--json] [--reprobe] [--model M]`: one screen about this machine, for bug reports."""

from __future__ import annotations

import argparse
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from instructune.hardware.matmul import Probe
    from instructune.types import JSON

PACKAGES = ("instructune", "torch", "transformers", "peft", "accelerate", "datasets", "trl")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="this machine: CPU class, cores, memory, measured matmul speed, auto choices",
                       description="Everything a bug report needs about this machine, and the precision and "
                                   "threads `auto` picks here (measured, then cached).")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--reprobe", "--fresh", action="store_true",
                   help="measure the matmul probe again: the cached result is replaced, or forgotten where the new "
                        "one is not kept (a near-tie, or measured under load); --fresh is the old name")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="whose shapes the probe uses (default: the default model's; no weights are loaded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = collect(args.model, reprobe=args.reprobe)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def collect(model: str, reprobe: bool = False) -> JSON:
    """What `doctor` reports, as plain data."""
    import torch

    from instructune import hardware, hub

    usable, why = hardware.usable_cpus()
    threads, _ = hardware.choose_threads(None, usable, hardware.local_ranks())
    torch.set_num_threads(threads)  # the probe runs at the threads a run would use
    shapes = hardware.shapes_of(model)
    probe = hardware.probe(shapes, fresh=reprobe, log=None)
    choice = hardware.resolve_precision("auto", shapes, log=None)  # the same result: cached, or kept in-process
    flags = hardware.cpu_flags()
    root = hub.cache_root()
    return {
        "os": platform.platform(), "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cpu": {"model": hardware.cpu_model(), "class": hardware.cpu_class(flags, hardware.capability()),
                "torch_capability": hardware.capability(),
                "flags": [f for f in hardware.BF16_FLAGS if f in flags],
                "isa_env": {k: os.environ[k] for k in hardware.ISA_ENV if k in os.environ},
                "cores_online": os.cpu_count(), "cores_usable": usable, "cores_usable_why": why},
        "memory": _memory(),
        "gpus": _gpus(torch),
        "probe": _probe(probe),
        "auto": {"precision": choice.precision, "reason": choice.reason, "threads": threads,
                 "bf16_margin": hardware.BF16_MARGIN},
        "cache": {"path": str(root), "mb": round(_size(root) / 2**20, 1), "models": _pulled_models(),
                  "data": _pulled_data()},
    }


def render(info: JSON) -> str:
    cpu, mem, probe, auto, cache = info["cpu"], info["memory"], info["probe"], info["auto"], info["cache"]
    gpus = "; ".join(f"{g['name']} ({g['memory_gb']} GB, bf16 {'yes' if g['bf16'] else 'no'})" for g in info["gpus"])
    isa = " ".join(f"{k}={v}" for k, v in cpu["isa_env"].items())
    lines = [
        ("os", info["os"]),
        ("python", info["python"]),
        ("packages", ", ".join(f"{k} {v or '-'}" for k, v in info["packages"].items())),
        ("cpu", cpu["model"]),
        ("cpu class", f"{cpu['class']} (torch capability {cpu['torch_capability']}; flags "
                      f"{' '.join(cpu['flags']) or 'none'}{'; ' + isa if isa else ''})"),
        ("cores", f"{cpu['cores_usable']} usable of {cpu['cores_online']} online ({cpu['cores_usable_why']})"),
        ("memory", f"{mem['total_gb']} GB total, {mem['available_gb']} GB available"
                   + (f", cgroup limit {mem['cgroup_limit_gb']} GB" if mem.get("cgroup_limit_gb") else "")),
        ("gpus", gpus or "none"),
        ("matmul", f"fp32 {probe['fp32_gflops']} GFLOP/s, bf16 autocast {probe['bf16_gflops']} GFLOP/s "
                   f"(bf16/fp32 {probe['bf16_vs_fp32']}x; {probe['threads']} threads, shapes "
                   f"{' '.join('x'.join(map(str, s)) for s in probe['shapes'])}; "
                   + ("cached" if probe["cached"] else f"measured in {probe['seconds']} s")
                   + (f"; probe error: {probe['error']}" if probe["error"] else "") + ")"),
        ("decided", _decided(probe)),
        ("auto picks", f"{auto['reason']}; threads {auto['threads']}"),
        ("cache", f"{cache['path']} ({cache['mb']} MB)"),
        ("models pulled", ", ".join(cache["models"]) or "none"),
        ("data pulled", ", ".join(cache["data"]) or "none"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _decided(probe: JSON) -> str:
    """When and under what load the probe was measured: `2026-12-07 19:50, load 0.12 on 2 CPUs, spread 3%`."""
    load = "load unknown" if probe["load"] is None else f"load {probe['load']:.2f} on {probe['cpus']} CPUs"
    spread = max(probe["fp32_spread"], probe["bf16_spread"])
    return f"{probe['measured'][:16]}, {load}, spread {spread:.0%}" + ("" if probe["kept"] else "; not kept: this process only")


def _probe(p: Probe) -> JSON:
    """The matmul probe: medians, each repetition, and how far to trust them (load before, spread, of peak)."""
    return {"shapes": p.shapes, "threads": p.threads, "fp32_gflops": round(p.fp32_gflops, 1),
            "bf16_gflops": round(p.bf16_gflops, 1), "bf16_vs_fp32": round(p.ratio, 3),
            "fp32_runs": [round(x, 1) for x in p.fp32_runs], "bf16_runs": [round(x, 1) for x in p.bf16_runs],
            "fp32_spread": round(p.fp32_spread, 3), "bf16_spread": round(p.bf16_spread, 3),
            "fp32_of_peak": round(p.fp32_of_peak, 3), "bf16_of_peak": round(p.bf16_of_peak, 3),
            "load": None if p.load is None else round(p.load, 2), "cpus": p.cpus, "measured": p.measured,
            "seconds": round(p.seconds, 3), "cached": p.cached, "kept": p.error is None and not p.doubts(),
            "doubts": p.doubts(), "error": p.error}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _memory() -> JSON:
    out: JSON = {"total_gb": None, "available_gb": None, "cgroup_limit_gb": None}
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        out["total_gb"] = round(int(fields["MemTotal"].split()[0]) / 2**20, 1)
        out["available_gb"] = round(int(fields["MemAvailable"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(f).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if out["total_gb"] and limit < out["total_gb"] * 2**30:
            out["cgroup_limit_gb"] = round(limit / 2**30, 1)
    return out


def _gpus(torch: ModuleType) -> list[JSON]:
    if not torch.cuda.is_available():
        return []
    return [{"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
             "bf16": torch.cuda.is_bf16_supported()} for i in range(torch.cuda.device_count())]


def _size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def _pulled_models() -> list[str]:
    from instructune.models import MANIFEST, MODEL_PACKS, pack_dir

    return [n for n in MODEL_PACKS if (pack_dir(n) / MANIFEST).exists()]


def _pulled_data() -> list[str]:
    from instructune.data.packs import PACKS, pack_dir

    return [n for n in PACKS if (pack_dir(n) / "rows.jsonl").exists()]

