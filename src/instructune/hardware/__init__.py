"""This machine, measured: CPU class and usable cores (`cpu`), and what `precision: auto` picks (`precision`)."""

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
from instructune.hardware.precision import (
    BF16_MARGIN,
    CACHE_FILE,
    DEFAULT_SHAPES,
    PrecisionChoice,
    Probe,
    decide,
    describe_machine,
    eval_dtype,
    key_hash,
    machine_key,
    machine_summary,
    matmul_gflops,
    model_shapes,
    probe,
    resolve_precision,
    results_stem,
    shapes_of,
    write_results,
)

__all__ = ["BF16_FLAGS", "BF16_MARGIN", "CACHE_FILE", "DEFAULT_SHAPES", "ISA_ENV", "PrecisionChoice", "Probe",
           "capability", "cgroup_quota", "choose_threads", "cpu_class", "cpu_flags", "cpu_model", "decide",
           "describe_machine", "eval_dtype", "key_hash", "local_ranks", "machine_key", "machine_summary",
           "matmul_gflops", "model_shapes", "probe", "resolve_precision", "results_stem", "reuse_freed_memory",
           "setup_threads", "shapes_of", "usable_cpus", "write_results"]
