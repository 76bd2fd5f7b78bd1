"""Round three, defect 6: every `forgetting_budget` is range-checked with the other config problems. A budget is
a share of the original model's score that may be lost: a finite number, 0 or more, and a bool is not a
number. Before, `{measure: "0.1"}` passed the check and crashed at the first validation, and a NaN budget
could never be exceeded, so `select: tradeoff` silently became best-loss selection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from instructune.cli import main
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.recipes.sweep import load_sweep
from instructune.training.config import TrainConfig

MEASURE = "general-probe"


def tradeoff(budget: object) -> dict:
    """A training config that selects on the trade-off, its retention suite the general probe alone."""
    return {"select": "tradeoff", "retention": {"probe_prompts": 2}, "forgetting_budget": budget}


@pytest.mark.parametrize(("budget", "says"), [
    ("0.1", "forgetting_budget must be a number (a share of the original score: 0.05 = 5%), or {measure: number}, "
            "got '0.1' (YAML 1.1 reads 5e-2 as text"),
    (True, "forgetting_budget must be a number"),
    (-0.1, "forgetting_budget must be a finite number, 0 or more (0.05: may lose 5% of the original score), got -0.1"),
    (math.nan, "forgetting_budget must be a finite number, 0 or more"),
    (math.inf, "got inf"),
    ({MEASURE: "0.1"}, f"forgetting_budget.{MEASURE} must be a number (a share of the original score: 0.05 = 5%), "
                       "got '0.1'"),
    ({MEASURE: False}, f"forgetting_budget.{MEASURE} must be a number"),
    ({MEASURE: -1}, f"forgetting_budget.{MEASURE} must be a finite number, 0 or more"),
    ({MEASURE: math.nan}, "got nan"),
    ({}, "forgetting_budget {} bounds no measure"),
])
def test_a_bad_forgetting_budget_is_refused_with_the_fix(budget: object, says: str) -> None:
    with pytest.raises(InstructuneError, match="config is invalid") as e:
        load_config(TrainConfig, data=tradeoff(budget))
    assert says in str(e.value)


@pytest.mark.parametrize("budget", [0, 0.05, 1, 2.5, {MEASURE: 0}, {MEASURE: 0.1}])
def test_a_good_budget_passes(budget: object) -> None:
    assert load_config(TrainConfig, data=tradeoff(budget)).loop.forgetting_budget == budget


def test_every_bad_budget_is_reported_at_once_from_the_command_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("select: tradeoff\nretention: {probe_prompts: 2, text_source: rotten-tomatoes}\n"
                      "forgetting_budget: {general-probe: .nan, text-perplexity: '5e-2'}\nbatch_size: 0\n")
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "(3 problems)" in err and "Traceback" not in err
    assert "forgetting_budget.general-probe must be a finite number, 0 or more" in err and "got nan" in err
    assert "forgetting_budget.text-perplexity must be a number" in err and "write 0.05 or 5.0e-2" in err
    assert not (tmp_path / "run").exists()


def sweep_block(budget: object) -> dict:
    return {"sweep": {"params": {"optim.lr": [1e-3]}, "forgetting": {"probe_prompts": 2}, "forgetting_budget": budget}}


@pytest.mark.parametrize(("budget", "says"), [
    (math.nan, "got nan"),
    (-0.05, "got -0.05"),
    (math.inf, "got inf"),
    (True, "True is not a valid float"),  # the typed field refuses a bool already; kept so it stays refused
])
def test_a_bad_sweep_budget_is_refused(budget: object, says: str) -> None:
    with pytest.raises(InstructuneError, match="sweep config") as e:
        load_sweep(None, data=sweep_block(budget))
    assert "sweep.forgetting_budget" in str(e.value) and says in str(e.value)


def test_a_nan_sweep_budget_from_yaml_stops_the_sweep_before_a_trial(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**sweep_block(0.05), "output_dir": str(tmp_path / "sweep")}).replace(
        "forgetting_budget: 0.05", "forgetting_budget: .nan"))
    assert main(["sweep", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sweep.forgetting_budget must be a finite number, 0 or more" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()
    assert load_sweep(None, data=sweep_block(0.05))[1].forgetting_budget == 0.05
