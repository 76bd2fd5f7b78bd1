"""The machine a number was measured on, for result files: CPU, class, flags, threads, and the
fp32 and bf16-autocast matmul speed at the model's shapes, with the load it was measured under."""

from __future__ import annotations

import os

import torch

from instructune.hardware.cpu import (
    BF16_FLAGS,
    ISA_ENV,
    capability,
    cpu_class,
    cpu_flags,
    cpu_model,
    usable_cpus,
)
from instructune.hardware.matmul import DEFAULT_SHAPES, Shape, probe
from instructune.types import JSON


def machine_summary(shapes: tuple[Shape, ...] | list[Shape] = DEFAULT_SHAPES, fresh: bool = True) -> JSON:
    """The CPU class a speed figure was measured on, for result files: CPU, class, threads, and
    fp32 and bf16-autocast matmul speed at `shapes` (measured afresh by default), with the load and
    spread of that measurement."""
    flags = cpu_flags()
    p = probe(shapes, fresh=fresh, log=None)
    return {"cpu": cpu_model(), "cpu_class": cpu_class(flags, capability()), "torch_capability": capability(),
            "flags": [f for f in BF16_FLAGS if f in flags], "isa_env": {k: os.environ[k] for k in ISA_ENV
                                                                        if k in os.environ},
            "cores_usable": usable_cpus()[0], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "probe_shapes": p.shapes, "fp32_gflops": p.fp32_gflops, "bf16_gflops": p.bf16_gflops,
            "probe_load": p.load, "probe_spread": {"fp32": p.fp32_spread, "bf16": p.bf16_spread},
            "auto_precision": p.precision}


def describe_machine(m: JSON) -> str:
    """One line for a results file: `AMD EPYC, CPU class AVX2, 2 threads; matmul at the model's shapes
    fp32 157 GFLOP/s, bf16 autocast 20 (auto picks fp32)`."""
    isa = "".join(f", {k}={v}" for k, v in m.get("isa_env", {}).items())
    return (f"{m['cpu']}, CPU class {m['cpu_class']}{isa}, {m['threads']} threads, torch {m['torch']}; matmul at "
            f"the model's shapes: fp32 {m['fp32_gflops']:.0f} GFLOP/s, bf16 autocast {m['bf16_gflops']:.0f} "
            f"(auto picks {m['auto_precision']})")
