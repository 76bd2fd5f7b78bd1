"""The machine probe: precision decided from measured timings, its cache, threads from affinity and quota."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from instructune import hardware
from instructune.cli import main
from instructune.errors import InstructuneError

REPO = Path(__file__).resolve().parents[1]
SHAPES = ((128, 64, 64), (128, 64, 128))


@pytest.fixture(autouse=True)
def _measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests exercise the measured choice, not the suite's fixed fp32."""
    monkeypatch.delenv("INSTRUCTUNE_AUTO_PRECISION", raising=False)
    for name in hardware.ISA_ENV:
        monkeypatch.delenv(name, raising=False)


def timings(fp32: float, bf16: float, calls: list | None = None):  # noqa: ANN201
    def measure(shapes: object, bf16: bool) -> float:
        if calls is not None:
            calls.append(bf16)
        return speeds[bf16]
    speeds = {False: fp32, True: bf16}
    return measure


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    (66.0, 1.8, "fp32"),     # AVX2: bf16 emulated, 37x slower
    (190.0, 420.0, "bf16"),  # AVX-512 with bf16 units
    (260.0, 1400.0, "bf16"),  # AMX
    (100.0, 110.0, "fp32"),  # 1.10x: not clearly faster
    (100.0, 115.0, "bf16"),  # exactly the margin
])
def test_decision_rule(fp32: float, bf16: float, expected: str) -> None:
    assert hardware.decide(fp32, bf16) == expected
    lines: list[str] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append,
                                        measure=timings(fp32, bf16))
    assert choice.precision == expected
    assert choice.dtype == ("bfloat16" if expected == "bf16" else "float32")
    assert (choice.fp32_gflops, choice.bf16_gflops) == (fp32, bf16)
    [line] = lines  # one line, with both measured figures
    assert line.startswith(f"precision auto -> {expected}: bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f}")


def test_a_failed_probe_falls_back_to_fp32_and_says_so() -> None:
    def broken(shapes: object, bf16: bool) -> float:
        if bf16:
            raise RuntimeError("no bf16 kernel for this CPU")
        return 50.0
    lines: list[str] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append, measure=broken)
    assert choice.precision == "fp32"
    assert lines == ["precision auto -> fp32: the bf16 probe failed (RuntimeError: no bf16 kernel for this CPU)"]
    # an explicit bf16 on such a CPU is an error naming the fix
    with pytest.raises(InstructuneError, match="could not run a bf16 matmul.*precision=auto or fp32"):
        hardware.resolve_precision("bf16", SHAPES, device="cpu", log=None, measure=broken)
    # a failed probe is not cached: the next process measures again
    calls: list[bool] = []
    hardware.resolve_precision("auto", SHAPES, device="cpu", log=None, measure=timings(10, 30, calls))
    assert calls == [False, True]


def test_explicit_bf16_on_a_slow_cpu_runs_with_one_warning() -> None:
    lines: list[str] = []
    choice = hardware.resolve_precision("bf16", SHAPES, device="cpu", log=lines.append, measure=timings(66.0, 1.8))
    assert choice.precision == "bf16"
    [warning] = lines
    assert warning.startswith("warning: precision bf16 on this CPU")
    assert "36.7x slower than fp32 (1.8 vs 66.0 GFLOP/s)" in warning and "precision=auto or fp32" in warning
    lines.clear()
    hardware.resolve_precision("bf16", SHAPES[:1], device="cpu", log=lines.append, measure=timings(66.0, 400.0))
    assert lines == []  # bf16 is the fast choice there: nothing to warn about


def test_fp16_on_a_cpu_is_refused() -> None:
    with pytest.raises(InstructuneError, match="fp16 needs a GPU.*auto, fp32 or bf16"):
        hardware.resolve_precision("fp16", SHAPES, device="cpu", log=None, measure=timings(1, 1))


def test_fixed_auto_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUCTUNE_AUTO_PRECISION", "bf16")
    calls: list[bool] = []
    assert hardware.resolve_precision("auto", SHAPES, device="cpu", log=None,
                                      measure=timings(1, 0.1, calls)).precision == "bf16"
    assert calls == []  # nothing measured
    monkeypatch.setenv("INSTRUCTUNE_AUTO_PRECISION", "fast")
    with pytest.raises(InstructuneError, match="use fp32 or bf16"):
        hardware.resolve_precision("auto", SHAPES, device="cpu", log=None)


def test_probe_is_cached_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    first = hardware.probe(SHAPES, measure=timings(100, 20, calls), log=None)
    second = hardware.probe(SHAPES, measure=timings(999, 999, calls), log=None)
    assert calls == [False, True]  # the second process reads the first one's result
    assert not first.cached and second.cached and second.fp32_gflops == 100
    cache = json.loads((hardware_home() / hardware.CACHE_FILE).read_text())
    [entry] = cache.values()
    assert entry["key"]["cpu"] == hardware.cpu_model() and entry["key"]["torch"] == torch.__version__
    assert entry["key"]["shapes"] == [list(s) for s in SHAPES]
    # what the result depends on changes the key: an ISA cap (AVX2 emulation), threads, shapes
    base = hardware.machine_key(2, SHAPES)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.key_hash(hardware.machine_key(2, SHAPES)) != hardware.key_hash(base)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert hardware.key_hash(hardware.machine_key(2, SHAPES)) == hardware.key_hash(base)
    assert hardware.key_hash(hardware.machine_key(1, SHAPES)) != hardware.key_hash(base)
    assert hardware.key_hash(hardware.machine_key(2, SHAPES[:1])) != hardware.key_hash(base)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert hardware.key_hash(hardware.machine_key(2, SHAPES)) != hardware.key_hash(base)
    # --fresh measures again and replaces the entry
    fresh = hardware.probe(SHAPES, fresh=True, measure=timings(50, 200, calls), log=None)
    assert not fresh.cached and calls == [False, True, False, True]


def hardware_home() -> Path:
    import os
    return Path(os.environ["INSTRUCTUNE_HOME"])


def test_unwritable_cache_warns_and_still_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(blocked / "home"))  # cannot be created
    lines: list[str] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append,
                                        measure=timings(100, 300))
    assert choice.precision == "bf16"
    assert len(lines) == 2 and lines[0].startswith("warning: the probe cache") and "not kept" in lines[0]


def test_real_probe_is_quick_and_positive() -> None:
    p = hardware.probe(SHAPES, log=None)
    assert p.error is None and p.fp32_gflops > 0 and p.bf16_gflops > 0
    assert p.seconds < 1.0


@pytest.mark.parametrize(("flags", "cap", "env", "expected"), [
    ({"avx2"}, "AVX2", {}, "AVX2"),
    ({"avx2", "avx512f"}, "AVX512", {}, "AVX512"),
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", {}, "AVX512_BF16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512", {}, "AMX"),
    # the emulation of an AVX2-only CPU on a bigger one
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX2"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
     "AVX512_BF16"),
    (set(), "DEFAULT", {}, "DEFAULT"),
])
def test_cpu_class(flags: set[str], cap: str, env: dict[str, str], expected: str) -> None:
    assert hardware.cpu_class(flags, cap, env) == expected


def test_threads_choice() -> None:
    assert hardware.choose_threads(None, 2) == (2, None)
    assert hardware.choose_threads(None, 64, ranks=4) == (16, None)  # each local process its share
    assert hardware.choose_threads(None, 2, ranks=4) == (1, None)
    assert hardware.choose_threads(1, 2) == (1, None)
    threads, warning = hardware.choose_threads(8, 2)
    assert threads == 8 and "more than the 2 CPU(s)" in warning and "threads=2" in warning
    with pytest.raises(InstructuneError, match="threads must be at least 1"):
        hardware.choose_threads(0, 2)


def test_threads_follow_the_affinity_mask_and_the_cgroup_quota(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    proc = tmp_path / "cgroup-v2"
    proc.write_text("0::/job/step\n")
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs for the parent
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert hardware.usable_cpus({0, 1, 2, 3, 4, 5, 6, 7}, v2, proc)[0] == 2
    assert hardware.usable_cpus({0}, v2, proc)[0] == 1  # the mask is tighter
    (v2 / "job" / "cpu.max").write_text("max 100000\n")
    count, why = hardware.usable_cpus({0, 1, 2, 3}, v2, proc)
    assert count == 4 and "affinity" in why
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/docker\n3:cpu,cpuacct:/docker\n")
    count, why = hardware.usable_cpus(set(range(64)), v1, proc)
    assert count == 3 and "quota 3" in why
    assert hardware.usable_cpus(set(range(4)), tmp_path / "missing", tmp_path / "missing")[0] == 4


def test_setup_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    lines: list[str] = []
    try:
        assert hardware.setup_threads(1, log=lines.append) == 1
        assert torch.get_num_threads() == 1 and lines == ["threads: 1 (as asked)"]
    finally:
        torch.set_num_threads(before)


def _precisions(node: object) -> list[object]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("precision", "score_precision")] + [
            p for v in node.values() for p in _precisions(v)]
    if isinstance(node, list):
        return [p for v in node for p in _precisions(v)]
    return []


def test_no_shipped_config_names_a_fixed_precision() -> None:
    from instructune.recipes.demo import DemoConfig, default_config_path
    from instructune.training.config import TrainConfig

    files = sorted((REPO / "configs").glob("*.yaml")) + [default_config_path()]
    assert len(files) >= 6
    for f in files:
        assert all(p == "auto" for p in _precisions(yaml.safe_load(f.read_text()))), f
    assert TrainConfig().precision == "auto" and DemoConfig().precision == "auto"


def test_doctor_json_has_every_item(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"os", "python", "packages", "cpu", "memory", "gpus", "probe", "auto", "cache"}
    assert {"torch", "transformers", "peft", "accelerate"} <= set(info["packages"])
    assert {"model", "class", "torch_capability", "flags", "cores_usable", "cores_online"} <= set(info["cpu"])
    assert {"total_gb", "available_gb"} <= set(info["memory"])
    assert info["probe"]["fp32_gflops"] > 0 and info["probe"]["bf16_gflops"] > 0
    assert info["auto"]["precision"] in ("fp32", "bf16") and info["auto"]["threads"] >= 1
    assert {"path", "mb", "models", "data"} <= set(info["cache"])
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for label in ("cpu class", "cores", "memory", "matmul", "auto picks", "models pulled"):
        assert f"\n{label} " in text


def test_bench_results_are_named_by_the_cpu_class_they_ran_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = {"machine": {"cpu_class": "AVX2"}, "rows": [{"x": 1.5}]}
    md = hardware.write_results(tmp_path / "results", "scoring_passes", result, "| x |\n|---|\n| 1.5 |\n\n")
    assert md == tmp_path / "results" / "scoring_passes_avx2.md"
    assert md.read_text() == "| x |\n|---|\n| 1.5 |\n"
    assert json.loads((tmp_path / "results" / "scoring_passes_avx2.json").read_text()) == result
    assert capsys.readouterr().out == "| x |\n|---|\n| 1.5 |\n"
