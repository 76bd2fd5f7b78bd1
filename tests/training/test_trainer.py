"""The one trainer: its typed result, and every caller going through it."""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

from test_finetune import config  # the toy review task and its run config

from instructune.training.trainer import TrainResult, train

SRC = Path(__file__).resolve().parents[2] / "src" / "instructune"


def test_a_finished_run_gives_its_scores_folder_and_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = train(config(tmp_path, tiny_model_dir, max_steps=4, eval_every=2), log=lambda *_: None)
    assert isinstance(result, TrainResult) and result.finished and result.stopped == "max_steps"
    assert result.steps == 4
    assert result.output_dir == tmp_path / "run" and result.saved == tmp_path / "run" / "adapter"
    assert (result.saved / "adapter_config.json").is_file()
    # the typed views are the numbers of metrics.json, nothing else
    assert result.test == {k: v for k, v in result.metrics["test"].items() if isinstance(v, (int, float))}
    assert 0.0 <= result.test["accuracy"] <= 1.0 and result.validation["loss"] > 0
    assert not result.model.training


def test_a_signalled_run_says_it_did_not_finish(tmp_path: Path, tiny_model_dir: Path) -> None:
    def interrupt(step: int, scores: dict) -> None:  # SIGTERM at the first validation, as a scheduler sends it
        os.kill(os.getpid(), signal.SIGTERM)

    cfg = config(tmp_path, tiny_model_dir, max_steps=8, eval_every=2)
    result = train(cfg, log=lambda *_: None, observe=interrupt)
    assert not result.finished and result.stopped == "signal SIGTERM"
    assert result.steps == 2 and result.test == {} and result.validation == {}
    assert not (result.output_dir / "metrics.json").exists()


def calls(name: str) -> list[str]:
    """The modules under src/instructune whose code calls `name(...)`."""
    out = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(tree)):
            out.append(str(path.relative_to(SRC)))
    return sorted(out)


def test_only_the_trainer_runs_the_loop_and_builds_a_runs_data() -> None:
    assert calls("train_loop") == ["training/trainer.py"]
    assert [p for p in calls("build") if "RunData.build(" in (SRC / p).read_text()] == ["training/trainer.py"]


def test_no_library_module_starts_a_command_line_process() -> None:
    """Processes only where processes are the point: the sweep's workers (`commands/sweep.py`), distributed
    launches (accelerate, torchrun), the forgetting study's isolated runs (the trainer in a spawned process)."""
    found = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             if '"-m", "instructune"' in p.read_text() or "'-m', 'instructune'" in p.read_text()]
    assert found == ["commands/sweep.py"]
