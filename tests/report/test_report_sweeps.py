"""The report's sweep section: the trials table holds sweep.json's numbers, the charts are there, and a
multi-objective study gets its Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.errors import InstructuneError
from instructune.report import build_report


def trial(number: int, state: str, lr: float, r: int, values: list[float] | None, pruned_at: int | None = None) -> dict:
    return {"number": number, "state": state, "params": {"optim.lr": lr, "method.r": r}, "values": values,
            "validation": None, "test": None, "drops": None, "wall_seconds": 150.4 if state == "complete" else None,
            "peak_memory_mb": 3034.5 if state == "complete" else None, "pruned_at": pruned_at}


SWEEP = {"objective": "val_accuracy", "direction": "maximize", "forgetting": False, "forgetting_budget": None,
         "trials": [trial(0, "complete", 5e-4, 16, [0.84375]), trial(1, "pruned", 1.2e-4, 32, [0.515625], 20),
                    trial(2, "complete", 8.1e-4, 32, [0.890625])],
         "chosen": {"number": 2, "params": {"optim.lr": 8.1e-4, "method.r": 32}, "values": [0.890625]},
         "pareto": None, "importance": {"optim.lr": 0.71, "method.r": 0.29},
         "test": {"accuracy": 0.85, "f1": 0.8477}, "test_from": "the chosen configuration trained once more"}


def write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(data))
    return folder


def test_the_sweep_section_shows_every_trial_the_choice_and_the_one_test_score(tmp_path: Path,
                                                                               page_of: type) -> None:
    paths = build_report([write(tmp_path / "sweep", SWEEP)], tmp_path / "out")
    html = paths["html"].read_text()
    page = page_of(html)
    assert page.ids == ["sweep", "provenance"]
    rows = page.table("sweep/sweep.json: trials")
    assert [(r["trial"], r["state"], r["optim.lr"], r["method.r"], r["val accuracy"]) for r in rows] == [
        ("0", "complete", "0.0005", "16", "0.8438"), ("1", "pruned at 20", "0.00012", "32", "0.5156"),
        ("2", "complete", "0.00081", "32", "0.8906")]
    assert rows[0]["wall s"] == "150" and rows[1]["peak MB"] == "\u2013"
    assert [r["importance"] for r in page.table("parameter importance")] == ["0.71", "0.29"]
    assert "#2" in html and "0.850" in html  # the chosen trial and its test accuracy, in the cards
    assert len(page.images) == 1
    md = paths["md"].read_text()
    assert "| 2 | complete | 0.00081 | 32 | 0.8906 | 150 | 3,034 |" in md


def test_a_multi_objective_sweep_draws_its_pareto_front_and_lists_the_drops(tmp_path: Path, page_of: type) -> None:
    multi = {**SWEEP, "forgetting": True, "forgetting_budget": 0.05, "pareto": [0, 2],
             "trials": [{**t, "values": t["values"] + [d]} for t, d in zip(SWEEP["trials"], [0.01, 0.2, 0.04])]}
    page = page_of(build_report([write(tmp_path / "sweep", multi)], tmp_path / "out")["html"].read_text())
    assert [r["mean drop"] for r in page.table("trials")] == ["+0.0100", "+0.2000", "+0.0400"]
    assert len(page.images) == 2


def test_a_forgetting_sweep_shows_its_mean_relative_drop_and_the_final_test_forgetting(tmp_path: Path,
                                                                                      page_of: type) -> None:
    test_forgetting = {"measures": {"general-probe": {"metric": "cross_entropy", "before": 2.0, "after": 2.5,
                                                      "drop": 0.5, "low": 0.4, "high": 0.6, "n": 16,
                                                      "relative_drop": 0.25}},
                       "mean_relative_drop": 0.25}
    multi = {**SWEEP, "forgetting": True, "second_objective": "mean relative drop", "forgetting_budget": 0.05,
             "pareto": [0, 2], "test_forgetting": test_forgetting,
             "trials": [{**t, "values": t["values"] + [d]} for t, d in zip(SWEEP["trials"], [0.01, 0.2, 0.04])]}
    html = build_report([write(tmp_path / "sweep", multi)], tmp_path / "out")["html"].read_text()
    assert [r["mean relative drop"] for r in page_of(html).table("trials")] == ["+1.0%", "+20.0%", "+4.0%"]
    assert "test mean relative drop" in html and "+25.0%" in html  # the chosen one, on the suite's test rows


def test_a_sweep_json_without_its_fields_names_them(tmp_path: Path) -> None:
    with pytest.raises(InstructuneError, match=r"(?s)instructune sweep.*no field 'chosen'"):
        build_report([write(tmp_path / "sweep", {k: v for k, v in SWEEP.items() if k != "chosen"})], tmp_path / "o")


def test_a_data_size_grid_shows_its_learning_curve(tmp_path: Path, page_of: type) -> None:
    curve = [{"x": 100, "value": 0.62, "low": 0.566, "high": 0.673, "n": 300},
             {"x": 1000, "value": 0.85, "low": 0.81, "high": 0.89, "n": 300}]
    grid = {**SWEEP, "learning_curve": curve, "chosen": {"number": 1, "params": {"data.train_limit": 1000},
                                                          "values": [0.85]},
            "trials": [{**trial(i, "complete", 5e-4, 16, [v]), "params": {"data.train_limit": x}}
                       for i, (x, v) in enumerate([(100, 0.6), (1000, 0.85)])]}
    page = page_of(build_report([write(tmp_path / "grid", grid)], tmp_path / "out")["html"].read_text())
    rows = page.table("grid: learning curve")
    assert [(r["data.train_limit"], r["test accuracy"], r["95% interval"]) for r in rows] == [
        ("100", "0.620", "0.566 to 0.673"), ("1,000", "0.850", "0.810 to 0.890")]
    assert len(page.images) == 2
