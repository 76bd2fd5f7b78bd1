from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from instructune.config import field_docs, load_config, to_dict
from instructune.errors import InstructuneError


@dataclass
class Optim:
    lr: float = 1e-3
    """Peak learning rate."""
    schedule: Literal["linear", "cosine"] = "cosine"
    """Decay after warmup."""


@dataclass
class Cfg:
    model: str
    """Model pack, folder or hub id."""
    steps: int = 10
    """Optimiser steps."""
    targets: list[str] = field(default_factory=lambda: ["q_proj"])
    """Module names to adapt."""
    out: Path | None = None
    """Output folder."""
    optim: Optim = field(default_factory=Optim)
    """Optimiser settings."""

    def problems(self) -> list[str]:
        return [f"steps: must be positive, got {self.steps}"] if self.steps <= 0 else []


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny\nsteps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Cfg, f, ["optim.lr=3e-4", "targets=[q_proj,v_proj]", "out=runs/x", "optim.schedule=linear"])
    assert cfg.model == "tiny" and cfg.steps == 5
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.schedule == "linear"
    assert cfg.targets == ["q_proj", "v_proj"] and cfg.out == Path("runs/x")
    assert to_dict(cfg)["out"] == "runs/x"


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny\nstpes: 5\noptim:\n  lr: fast\n  schedule: step\n")
    with pytest.raises(InstructuneError) as e:
        load_config(Cfg, f, ["steps=-1"])
    msg = str(e.value)
    assert "stpes: unknown field; did you mean 'steps'?" in msg
    assert "optim.lr: 'fast' is not a valid float (Peak learning rate.)" in msg
    assert "optim.schedule: 'step' is not a valid choice of 'linear' | 'cosine'" in msg
    assert "3 problems" in msg  # value checks (problems()) wait until every field has the right type


def test_cross_field_check_and_missing_field() -> None:
    with pytest.raises(InstructuneError, match="steps: must be positive, got 0"):
        load_config(Cfg, None, ["model=x", "steps=0"])
    with pytest.raises(InstructuneError, match="model: required field is missing"):
        load_config(Cfg, None, [])


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny\nsteps: [1, 2\n")
    with pytest.raises(InstructuneError, match=r"c.yaml line \d+, column \d+: YAML does not parse"):
        load_config(Cfg, f)


def test_bad_override_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(InstructuneError, match="is not key=value"):
        load_config(Cfg, None, ["model"])
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(InstructuneError, match="top level must be a mapping"):
        load_config(Cfg, f)


def test_a_misspelt_override_gets_the_suggestion_a_misspelt_file_field_gets(tmp_path: Path) -> None:
    """`optim.learning_rate` is no spelling of `lr`, but lr's docstring says "learning rate": suggested, from
    a file and from the command line alike."""
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny\noptim:\n  learning_rate: 0.1\n")
    messages = []
    for path, overrides in ((f, []), (None, ["model=tiny", "optim.learning_rate=0.1"])):
        with pytest.raises(InstructuneError) as e:
            load_config(Cfg, path, overrides)
        messages.append(str(e.value))
    assert all("optim.learning_rate: unknown field; did you mean 'optim.lr'?" in m for m in messages)
    with pytest.raises(InstructuneError, match="optim.speed: unknown field; known fields: lr, schedule"):
        load_config(Cfg, None, ["model=tiny", "optim.speed=2"])  # nothing close, nothing described so


def test_field_docs() -> None:
    assert field_docs(Cfg)["steps"] == "Optimiser steps."


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_command_it_opens_with(path: Path) -> None:
    from instructune.recipes.forgetting import ForgettingConfig
    from instructune.recipes.sequential import SequentialConfig
    from instructune.recipes.sweep import load_sweep
    from instructune.training.config import TrainConfig

    command = path.read_text().splitlines()[0].split()
    assert command[:2] == ["#", "instructune"] and command[3] == f"configs/{path.name}"
    if command[2] == "sweep":
        load_sweep(path)
    else:
        load_config({"train": TrainConfig, "forgetting": ForgettingConfig, "sequential": SequentialConfig}[command[2]],
                    path)


def test_show_fields_lists_flat_sections_with_their_parents_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`train --show-fields` walks every section: a flat one (data's task and split, the loop, a keep entry's
    required task) under its parent's names, with the parent's defaults, and each method's own options."""
    from instructune.cli import main

    assert main(["train", "x", "--show-fields"]) == 0
    lines = set(capsys.readouterr().out.splitlines())
    for line in ("data.source: str = 'rotten-tomatoes'", "data.seed: int = 0", "max_steps: int (or null) = None",
                 "batch_size: int = 8", "keep[].source: str = 'required'", "keep[].limit: int = 256",
                 "method.r: int = 8", "(options of method.name: lora)"):
        assert line in lines, line
