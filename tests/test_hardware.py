"""The machine probe: precision decided from measured timings, its cache, threads from affinity and quota."""

from __future__ import annotations

import json
import os
import re
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
    """These tests exercise the measured choice, not the suite's fixed fp32, on an idle machine (the
    load average of the machine running the suite must not decide whether a result is cached)."""
    monkeypatch.delenv("INSTRUCTUNE_AUTO_PRECISION", raising=False)
    for name in hardware.ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def timings(fp32: float, bf16: float, calls: list | None = None):  # noqa: ANN201
    def measure(shapes: object, bf16: bool) -> float:
        if calls is not None:
            calls.append(bf16)
        return speeds[bf16]
    speeds = {False: fp32, True: bf16}
    return measure


def sequence(fp32: list[float], bf16: list[float], calls: list | None = None):  # noqa: ANN201
    """One timing per repetition, in the order asked: the probe interleaves fp32, bf16, fp32, bf16, ..."""
    def measure(shapes: object, bf16: bool) -> float:
        if calls is not None:
            calls.append(bf16)
        return queues[bf16].pop(0)
    queues = {False: list(fp32), True: list(bf16)}
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
    assert calls == [False, True] * hardware.PROBE_ROUNDS


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
    assert calls == [False, True] * hardware.PROBE_ROUNDS  # the second process reads the first one's result
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
    assert not fresh.cached and calls == [False, True] * (2 * hardware.PROBE_ROUNDS)


def hardware_home() -> Path:
    return Path(os.environ["INSTRUCTUNE_HOME"])


def cached_entries() -> list[dict]:
    path = hardware_home() / hardware.CACHE_FILE
    return list(json.loads(path.read_text()).values()) if path.exists() else []


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    # other work hits the first fp32 repetition: that pair alone says bf16 1.7x, the medians 0.5x
    ([30.0, 100.0, 101.0, 99.0, 100.0], [50.0, 52.0, 51.0, 49.0, 50.0], "fp32"),
    # ... and one repetition of each side: bf16 is 3x either way
    ([100.0, 21.0, 101.0, 99.0, 100.0], [300.0, 305.0, 40.0, 298.0, 302.0], "bf16"),
])
def test_interleaved_medians_decide_despite_outliers(fp32: list[float], bf16: list[float], expected: str) -> None:
    calls: list[bool] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=None, measure=sequence(fp32, bf16, calls))
    assert calls == [False, True] * hardware.PROBE_ROUNDS
    assert choice.precision == expected
    assert (choice.fp32_gflops, choice.bf16_gflops) == (sorted(fp32)[2], sorted(bf16)[2])
    [entry] = cached_entries()  # the spread between the quartiles is small: a clean result, kept
    assert entry["probe"]["fp32_runs"] == fp32 and entry["probe"]["bf16_runs"] == bf16


def test_a_near_tie_picks_fp32_and_is_not_cached() -> None:
    # the case seen: medians 11.5 vs 9.9 (1.16, over the 1.15 margin), quartiles 1.12 to 1.18 across it
    fp32, bf16 = [9.9, 10.4, 9.6, 10.1, 9.8], [11.5, 12.2, 11.0, 11.6, 11.3]
    lines: list[str] = []
    calls: list[bool] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append,
                                        measure=sequence(fp32, bf16, calls))
    assert hardware.decide(9.9, 11.5) == "bf16" and choice.precision == "fp32"
    [line] = lines
    assert line.startswith("precision auto -> fp32: bf16 matmul 11.5 GFLOP/s vs fp32 9.9")
    assert line.endswith("; near-tie: bf16/fp32 1.16 within the noise of the 1.15 margin; fp32; not kept")
    assert cached_entries() == []  # the next process measures again
    # this process keeps its measurement: asking again measures nothing
    again = hardware.resolve_precision("auto", SHAPES, device="cpu", log=None, measure=timings(1, 9, calls))
    assert again.precision == "fp32" and len(calls) == 2 * hardware.PROBE_ROUNDS


def test_a_result_under_load_is_used_but_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * cpus, 0.0, 0.0))  # far above this process's own share
    lines: list[str] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append, measure=timings(100, 300))
    assert choice.precision == "bf16"  # this process goes by what it measured
    [line] = lines
    assert re.search(rf"; measured under load \d+\.\d\d on {cpus} CPUs; not kept$", line), line
    assert cached_entries() == []
    # the load that counts is the one before the probe: its own threads raise the load average
    load = [0.0]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))

    def busy(shapes: object, bf16: bool) -> float:
        load[0] = 4.0 * cpus
        return 300.0 if bf16 else 100.0
    p = hardware.probe(SHAPES, fresh=True, measure=busy, log=None)
    assert p.load == 0.0 and p.doubts() == [] and len(cached_entries()) == 1


def test_a_clean_result_is_cached_with_its_load_date_and_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.matmul, "background_load", lambda: (0.12, 2))
    fp32, bf16 = [100.0, 96.0, 104.0, 98.0, 102.0], [300.0, 303.0, 291.0, 297.0, 309.0]
    first = hardware.probe(SHAPES, measure=sequence(fp32, bf16), log=None)
    [entry] = cached_entries()
    recorded = entry["probe"]
    assert recorded["load"] == 0.12 and recorded["cpus"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", recorded["measured"]) and entry["measured"] == first.measured
    assert recorded["fp32_spread"] == pytest.approx((102 - 98) / 100)  # quartiles over the median
    assert recorded["bf16_spread"] == pytest.approx((303 - 297) / 300)
    assert recorded["fp32_of_peak"] == pytest.approx(100 / 104) and recorded["bf16_of_peak"] == pytest.approx(300 / 309)
    second = hardware.probe(SHAPES, measure=timings(1, 1), log=None)
    assert second.cached and (second.load, second.fp32_spread, second.measured) == (0.12, 0.04, first.measured)


def test_doctor_says_when_and_under_what_load_and_reprobes(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []

    def measure(shapes: object, bf16: bool, budget_s: float = 0.0) -> float:
        calls.append(bf16)
        return [300.0, 294.0][len(calls) % 4 == 0] if bf16 else 100.0  # bf16 spread 2%

    monkeypatch.setattr(hardware.matmul, "matmul_gflops", measure)
    monkeypatch.setattr(hardware.matmul, "background_load", lambda: (0.12, 2))
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\ndecided +\d{4}-\d\d-\d\d \d\d:\d\d, load 0\.12 on 2 CPUs, spread 2%\n", text), text
    assert len(calls) == 2 * hardware.PROBE_ROUNDS
    assert main(["doctor"]) == 0 and "; cached)" in capsys.readouterr().out
    assert len(calls) == 2 * hardware.PROBE_ROUNDS  # read from the cache
    for flag in ("--reprobe", "--fresh"):  # --fresh: the old name
        assert main(["doctor", flag]) == 0 and "; measured in " in capsys.readouterr().out
    assert len(calls) == 6 * hardware.PROBE_ROUNDS
    # a re-probe under load is not kept, and forgets the cached result it would have replaced
    monkeypatch.setattr(hardware.matmul, "background_load", lambda: (1.5, 2))
    assert main(["doctor", "--reprobe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["probe"]["load"] == 1.5 and not info["probe"]["kept"] and cached_entries() == []
    assert info["auto"]["reason"].endswith("; measured under load 1.50 on 2 CPUs; not kept")
    assert main(["doctor"]) == 0 and "spread 2%; not kept: this process only\n" in capsys.readouterr().out


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
