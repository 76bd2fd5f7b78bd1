"""`instructune sweep` on a tiny model: pruning, a kill -9 and a resume, two workers on one study, a
Pareto front of gain against forgetting, and every bad sweep block refused before a trial runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from instructune.cli import main
from instructune.search.study import storage

STUDY = "instructune-sweep"


def sweep_config(tmp_path: Path, model: Path, toy_tasks: tuple[Path, Path, Path], **sweep: object) -> Path:
    target, keep, tpl = toy_tasks
    cfg = {"model": str(model), "output_dir": str(tmp_path / "sweep"), "batch_size": 8, "max_steps": 4,
           "eval_every": 2, "eval_mode": "likelihood", "optim": {"warmup_steps": 0},
           "data": {"source": str(target), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                    "test_limit": 8},
           "sweep": {"trials": 6, "objective": "val_loss", "pruner": "median", "seed": 0,
                     "params": {"optim.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "method.r": [2, 4]},
                     **sweep}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    if not (folder / "study.db").exists():
        return []
    try:  # opened as the sweep opens it: the lock keeps a reader from creating the tables beside the sweep
        study = optuna.load_study(study_name=STUDY, storage=storage(None, folder))
    except KeyError:  # not created yet
        return []
    return study.get_trials(deepcopy=False)


def done(folder: Path) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials(folder))


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_its_trial_count_and_best_yaml_trains(tmp_path: Path, tiny_model_dir: Path,
                                                                        toy_tasks: tuple[Path, Path, Path]) -> None:
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, final=False)
    folder = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "instructune", "sweep", str(cfg)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while done(folder) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done(folder) < 6 and not (folder / "sweep.json").exists()

    assert main(["sweep", str(cfg), "--resume"]) == 0
    states = [t.state.name for t in trials(folder)]
    assert states.count("COMPLETE") + states.count("PRUNED") == 6
    report = json.loads((folder / "sweep.json").read_text())
    assert report["test"] is None and report["test_from"].startswith("not scored")
    assert all(t["validation"] is None or "loss" in t["validation"] for t in report["trials"])
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["method"]["r"] in (2, 4) and 1e-4 <= best["optim"]["lr"] <= 1e-1
    assert main(["train", str(folder / "best.yaml"), f"output_dir={tmp_path / 'again'}"]) == 0


@pytest.mark.slow
def test_two_workers_share_one_study_without_repeating_a_trial(tmp_path: Path, tiny_model_dir: Path,
                                                               toy_tasks: tuple[Path, Path, Path]) -> None:
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, pruner="none")
    assert main(["sweep", str(cfg), "--workers", "2"]) == 0
    finished = [t for t in trials(tmp_path / "sweep") if t.state.name == "COMPLETE"]
    numbers = [t.number for t in finished]
    assert len(numbers) >= 6 and len(set(numbers)) == len(numbers)
    # the worker shares the trials it joins in time for; one that loads after the first process has run them
    # all (a busy machine) runs none, not one more than sweep.trials
    ran = {t.user_attrs["pid"] for t in finished}
    assert len(ran) == 2 or (len(ran) == 1 and len(numbers) == 6), (ran, numbers)
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["test"]["loss"] > 0 and "final/" in report["test_from"]  # the chosen one, trained once more


@pytest.mark.slow
def test_forgetting_as_a_second_objective_gives_a_pareto_front(tmp_path: Path, tiny_model_dir: Path,
                                                               toy_tasks: tuple[Path, Path, Path]) -> None:
    _, keep, tpl = toy_tasks
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, trials=5, final=False, forgetting={
        "retention": [{"source": str(keep), "template": "title", "template_file": str(tpl), "limit": 4}],
        "probe_prompts": 2, "probe_tokens": 4, "text_source": None})
    assert main(["sweep", str(cfg)]) == 0
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    values = {t["number"]: t["values"] for t in report["trials"] if t["state"] == "complete"}
    front = report["pareto"]
    assert front and set(front) <= set(values)

    def dominates(a: list[float], b: list[float]) -> bool:  # lower loss and lower drop are both better
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    assert not any(dominates(values[a], values[b]) for a in front for b in front)
    assert all(any(dominates(values[f], values[o]) or values[f] == values[o] for f in front)
               for o in values if o not in front)  # every trial off the front is dominated by one on it
    assert report["chosen"]["number"] in front


@pytest.mark.parametrize(("params", "extra", "message"), [
    ({"optim.lrr": [1e-3]}, {}, "'optim.lrr' is not a training-config field"),
    ({"method.rank": [4]}, {}, "no method has an option 'rank'"),
    ({"optim.lr": {"low": 1e-3, "high": 1e-4}}, {}, "empty or inverted"),
    ({"optim.lr": {"low": 0, "high": 1e-3, "log": True}}, {}, "log range must stay above zero"),
    ({"optim.lr": {"low": 1e-4, "high": 1e-3, "values": [1e-4]}}, {}, "a list and a range for one parameter"),
    ({"optim.lr": []}, {}, "an empty list"),
    ({"optim.lr": [1e-3]}, {"objective": "val_rougeL"}, "val_rougeL is not a score these templates report"),
    ({"optim.lr": [1e-3]}, {"storage": "postgresql://nobody@127.0.0.1:1/none"}, "cannot be opened"),
    # test_every_trial measures a grid; beside anything that chooses it is refused, naming the field
    ({"optim.lr": [1e-3]}, {"test_every_trial": True, "pruner": "none"},
     "sweep.test_every_trial: the chosen configuration's final test score would no longer be the only look"),
    ({"optim.lr": [1e-3]}, {"test_every_trial": True, "final": False, "pruner": "none",
                            "forgetting": {"probe_prompts": 2}}, "sweep.test_every_trial: `forgetting:` makes"),
    ({"optim.lr": [1e-3]}, {"test_every_trial": True, "final": False}, "sweep.test_every_trial: pruner median"),
    ({"optim.lr": [1e-3]}, {"forgetting": {"probe_prompts": 40}}, "sweep.forgetting.probe_prompts must be 0 to 32"),
    ({"optim.lr": [1e-3]}, {"forgetting": {"split": "test"}}, "sweep.forgetting.split: unknown field"),
])
def test_a_bad_sweep_block_is_one_paragraph(tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path],
                                            params: dict, extra: dict, message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, params=params, **extra)
    assert main(["sweep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert done(tmp_path / "sweep") == 0


def test_a_study_is_continued_only_by_its_own_config(tmp_path: Path, tiny_model_dir: Path,
                                                     toy_tasks: tuple[Path, Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, trials=1, final=False, pruner="none")
    assert main(["sweep", str(cfg)]) == 0
    assert main(["sweep", str(cfg)]) == 2 and "continue it with --resume" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "--resume", "max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "created by another config" in err and "train.max_steps (4 -> 6)" in err


def test_the_first_trial_is_the_configs_own_values_where_they_lie_in_the_space(tmp_path: Path) -> None:
    from instructune.search import space
    from instructune.search.study import open_study
    params, problems = space.parse({"optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "method.r": [8, 16],
                                    "method.alpha": [16, 64]})
    assert problems == []
    base = {"optim": {"lr": 5.0e-4}, "method": {"name": "lora", "r": 16, "alpha": 32}}  # alpha 32: not a choice
    study = open_study(storage(None, tmp_path), ["maximize"], params, 0, "none", {"train": base}, False)
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"optim.lr": 5.0e-4, "method.r": 16}]
    # reopened (--resume): not queued again; a grid queues nothing (it tries every point anyway)
    study = open_study(storage(None, tmp_path), ["maximize"], params, 0, "none", {"train": base}, True)
    assert len(study.get_trials(deepcopy=False)) == 1
    grid, _ = space.parse({"method.r": [8, 16]})
    (tmp_path / "g").mkdir()
    other = open_study(storage(None, tmp_path / "g"), ["maximize"], grid, 0, "none", {"train": base}, False)
    assert other.get_trials(deepcopy=False) == []


def test_the_sweep_command_leaves_optunas_per_trial_info_lines_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each trial prints our own line; Optuna's INFO line after it said the same again."""
    from instructune.recipes import sweep as recipe

    seen = []
    monkeypatch.setattr(recipe, "load_sweep", lambda path, overrides: ({}, None))
    monkeypatch.setattr(recipe, "sweep", lambda *a, **k: seen.append(optuna.logging.get_verbosity()))
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        assert main(["sweep", "configs/sweep-lora-rotten-tomatoes.yaml"]) == 0
    finally:
        optuna.logging.set_verbosity(before)
    assert seen == [optuna.logging.WARNING]
