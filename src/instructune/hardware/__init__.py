"""This machine, measured: CPU class and usable cores (`cpu`), matmul speed (`matmul`), what `precision:
auto` picks (`precision`), and the machine a result was measured on (`machine`)."""

from instructune.hardware.cpu import (
    BF16_FLAGS,
    ISA_ENV,
    capability,
    cgroup_quota,
    choose_threads,
    cpu_class,
    cpu_flags,
    cpu_model,
    local_ranks,
    reuse_freed_memory,
    setup_threads,
    usable_cpus,
)
from instructune.hardware.machine import describe_machine, machine_summary
from instructune.hardware.matmul import (
    BF16_MARGIN,
    CACHE_FILE,
    DEFAULT_SHAPES,
    LOAD_LIMIT,
    PROBE_ROUNDS,
    Probe,
    background_load,
    decide,
    key_hash,
    machine_key,
    matmul_gflops,
    model_shapes,
    probe,
    shapes_of,
)
from instructune.hardware.precision import PrecisionChoice, eval_dtype, resolve_precision

__all__ = ["BF16_FLAGS", "BF16_MARGIN", "CACHE_FILE", "DEFAULT_SHAPES", "ISA_ENV", "LOAD_LIMIT", "PROBE_ROUNDS",
           "PrecisionChoice", "Probe", "background_load", "capability", "cgroup_quota", "choose_threads",
           "cpu_class", "cpu_flags", "cpu_model", "decide", "describe_machine", "eval_dtype", "key_hash",
           "local_ranks", "machine_key", "machine_summary", "matmul_gflops", "model_shapes", "probe",
           "resolve_precision", "reuse_freed_memory", "setup_threads", "shapes_of", "usable_cpus"]
