"""Round three, defect 5: the probe cache ($INSTRUCTUNE_HOME/hardware.json) is a file anyone can edit. An
entry that does not parse, or is not plausible on this machine (a speed that is not finite and positive,
beyond what its CPUs could do, bf16/fp32 outside 0.001-20, runs whose median is not the speed), is a miss:
measured again, with one warning line, and replaced. Before, a field of the wrong type was a TypeError
traceback in `doctor` and `precision: auto`, and a forged `bf16 is 100x faster` was obeyed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from instructune import hardware
from instructune.cli import main

SHAPES = ((128, 64, 64), (128, 64, 128))


@pytest.fixture(autouse=True)
def _measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured choice on an idle machine (as tests/test_hardware.py), not the suite's fixed fp32."""
    monkeypatch.delenv("INSTRUCTUNE_AUTO_PRECISION", raising=False)
    for name in hardware.ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware.matmul, "background_load", lambda: (0.0, 2))


def timings(fp32: float, bf16: float, calls: list[bool]) -> Callable[..., float]:
    def measure(shapes: object, bf16: bool, budget_s: float = 0.0) -> float:
        calls.append(bf16)
        return speeds[bf16]
    speeds = {False: fp32, True: bf16}
    return measure


def cache_file() -> Path:
    return Path(os.environ["INSTRUCTUNE_HOME"]) / hardware.CACHE_FILE


def claimed(fp32: float, bf16: float) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        p.update(fp32_gflops=fp32, bf16_gflops=bf16, fp32_runs=[fp32] * 5, bf16_runs=[bf16] * 5)
    return edit


def setting(**fields: Any) -> Callable[[dict], None]:
    return lambda p: p.update(fields)


ENTRY_DAMAGE: dict[str, tuple[Callable[[dict], Any], str]] = {
    # name: (what is done to the entry's probe (a return value replaces the whole entry), the warning says)
    "a string entry": (lambda p: "garbage", "not an object with a 'probe' object"),
    "a list entry": (lambda p: [1, 2], "not an object with a 'probe' object"),
    "a string probe": (lambda p: {"probe": "fast"}, "not an object with a 'probe' object"),
    "an unknown field": (setting(bogus=1), "unknown field 'bogus'"),
    "a missing field": (lambda p: p.pop("fp32_gflops") and None, "missing field 'fp32_gflops'"),
    "a speed as text": (setting(fp32_gflops="fast"), "a speed of fast GFLOP/s"),
    "a negative speed": (claimed(-100.0, 30.0), "a speed of -100.0 GFLOP/s"),
    "a NaN speed": (claimed(100.0, math.nan), "a speed of nan GFLOP/s"),
    "an infinite speed": (claimed(math.inf, 30.0), "a speed of inf GFLOP/s"),
    "beyond any CPU": (claimed(1e9, 3e9), "at most"),
    "bf16 100x faster": (claimed(10.0, 1000.0), "bf16/fp32 100, outside the plausible 0.001 to 20"),
    "bf16 2000x slower": (claimed(100.0, 0.05), "bf16/fp32 0.0005, outside"),
    "runs that are text": (setting(fp32_runs="abc"), "fp32_runs and bf16_runs must be lists"),
    "runs off the median": (setting(fp32_runs=[1.0] * 5), "fp32_gflops is not the median of fp32_runs"),
    "load as text": (setting(load="high"), "load is high"),
    "threads as a bool": (setting(threads=True), "threads is True"),
    "shapes of two numbers": (setting(shapes=[[128, 64]]), "shapes is [[128, 64]]"),
    "a recorded error": (setting(error="boom"), "error is boom"),
}


def damage(edit: Callable[[dict], Any]) -> None:
    """Apply `edit` to the one cached entry, in the file, as a hand (or a forger) would."""
    cache = json.loads(cache_file().read_text())
    [digest] = cache
    replaced = edit(cache[digest]["probe"])
    if replaced is not None:
        cache[digest] = replaced
    cache_file().write_text(json.dumps(cache))  # json writes NaN and Infinity, and reads them back


@pytest.mark.parametrize("case", ENTRY_DAMAGE)
def test_a_bad_cache_entry_is_measured_again_with_one_warning(case: str) -> None:
    edit, said = ENTRY_DAMAGE[case]
    calls: list[bool] = []
    hardware.probe(SHAPES, measure=timings(100.0, 30.0, calls), log=None)  # a clean result: cached
    damage(edit)
    lines: list[str] = []
    choice = hardware.resolve_precision("auto", SHAPES, device="cpu", log=lines.append,
                                        measure=timings(100.0, 30.0, calls))
    assert len(calls) == 4 * hardware.PROBE_ROUNDS  # measured again, not read
    assert (choice.precision, choice.fp32_gflops, choice.bf16_gflops) == ("fp32", 100.0, 30.0)
    [warning] = [line for line in lines if line.startswith("warning:")]
    assert "is not believed (" in warning and said in warning and warning.endswith("; measuring again."), warning
    [entry] = json.loads(cache_file().read_text()).values()  # the damaged entry is replaced by the measurement
    assert (entry["probe"]["fp32_gflops"], entry["probe"]["bf16_gflops"]) == (100.0, 30.0)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", "[" * 100_000])
def test_a_cache_file_that_is_not_a_json_object_is_measured_over(text: str) -> None:
    cache_file().parent.mkdir(parents=True, exist_ok=True)
    cache_file().write_text(text)
    calls: list[bool] = []
    lines: list[str] = []
    p = hardware.probe(SHAPES, measure=timings(100.0, 300.0, calls), log=lines.append)
    assert not p.cached and p.precision == "bf16" and len(calls) == 2 * hardware.PROBE_ROUNDS
    assert lines == [f"warning: the probe cache {cache_file()} is not a JSON object; measuring again."]
    assert len(json.loads(cache_file().read_text())) == 1


def test_a_plausible_entry_is_still_read(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []
    hardware.probe(SHAPES, measure=timings(100.0, 1500.0, calls), log=None)  # AMX-like: bf16 15x, plausible
    again = hardware.probe(SHAPES, measure=timings(1.0, 1.0, calls), log=None)
    assert again.cached and again.precision == "bf16" and len(calls) == 2 * hardware.PROBE_ROUNDS
    assert capsys.readouterr().err == ""


def test_doctor_with_a_forged_entry_measures_again_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(hardware.matmul, "matmul_gflops", timings(100.0, 30.0, calls))
    assert main(["doctor", "--json"]) == 0
    capsys.readouterr()
    for edit in (claimed(10.0, 1000.0), setting(load="high"), setting(fp32_gflops=-5.0)):
        damage(edit)
        assert main(["doctor", "--json"]) == 0  # no traceback: the doctor is where a broken machine is looked at
        out, err = capsys.readouterr()
        info = json.loads(out)
        assert not info["probe"]["cached"] and info["probe"]["bf16_vs_fp32"] == 0.3
        assert info["auto"]["precision"] == "fp32"
        assert err.count("warning: the probe cache") == 1 and "measuring again" in err, err
