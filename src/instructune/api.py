"""The Python API: what the command line does, as functions.

    import instructune

    cfg = instructune.load_config("train", "configs/lora-rotten-tomatoes.yaml", ["max_steps=20"])
    result = instructune.train(cfg)                       # the trained model, its tokenizer, metrics.json
    report = instructune.evaluate(["smollm2-135m-instruct"], [f"{cfg.output_dir}/adapter"],
                                  data="rotten-tomatoes", template="sentiment", limit=50)

Configs are the same typed dataclasses the YAML files fill; every function takes one, or a YAML path,
or a dict of its fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from instructune.config import load_config as _load
from instructune.config import to_dict
from instructune.errors import InstructuneError
from instructune.evaluation.settings import EvalSettings
from instructune.recipes.evaluate import evaluate as _evaluate
from instructune.recipes.forgetting import ForgettingConfig
from instructune.recipes.forgetting import forgetting as _forgetting
from instructune.recipes.sequential import SequentialConfig
from instructune.recipes.sequential import sequential as _sequential
from instructune.recipes.sweep import load_sweep
from instructune.recipes.sweep import sweep as _sweep
from instructune.training.config import TrainConfig
from instructune.training.trainer import TrainResult
from instructune.training.trainer import train as run_training

KINDS: dict[str, type] = {"train": TrainConfig, "forgetting": ForgettingConfig, "sequential": SequentialConfig}
"""Config kinds by name: the YAML files of `instructune train`, `forgetting` and `sequential`."""

Source = Any
"""A config: the dataclass itself, a YAML path, or a dict of its fields."""


def load_config(kind: str | type, path: str | Path | None = None, overrides: Sequence[str] = (),
                **fields: Any) -> Any:
    """A config of `kind` ("train", "forgetting", "sequential", or the dataclass) from a YAML file
    and/or keyword fields, with dotted `key=value` overrides; every invalid field is reported at once.

        cfg = load_config("train", "configs/lora-rotten-tomatoes.yaml", ["optim.lr=3e-4"], max_steps=50)
    """
    cls = KINDS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        raise InstructuneError(f"unknown config kind {kind!r}; kinds: {', '.join(KINDS)}, or a config dataclass.")
    return _load(cls, path, list(overrides), data=fields or None)


def train(config: Source, overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """Fine-tune as `instructune train` does; returns the trained model (best validation weights),
    its tokenizer and the metrics written to `output_dir/metrics.json`."""
    return run_training(_config(TrainConfig, config, overrides), resume=resume, overwrite=overwrite, log=log)


def evaluate(models: Sequence[str], adapters: Sequence[str] = (), settings: EvalSettings | None = None,
             out: str | Path | None = None, log: Callable[[str], None] = print,
             **fields: int | str | Sequence[int] | Sequence[float] | Sequence[str] | None) -> dict[str, Any]:
    """Score models (and adapters on the first model) side by side on the same examples, as `instructune
    eval` does: given `settings`, or its options as keywords (data, template, split, shots, limit, mode,
    data_seed, ...: see `EvalSettings.of`). Returns what eval.json holds (also written to `out`, if given)."""
    if settings is None:
        settings = EvalSettings.of(**fields)
    elif fields:
        raise InstructuneError(f"evaluate: pass settings or keyword options ({', '.join(fields)}), not both.")
    return _evaluate(list(models), list(adapters), settings, out=Path(out) if out else None, log=log)


def forgetting(config: Source, overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train once per forgetting cure and compare what each forgot, as `instructune forgetting` does."""
    return _forgetting(_config(ForgettingConfig, config, overrides), log=log)


def sequential(config: Source, overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train tasks one after another and report the forgetting and transfer matrix."""
    return _sequential(_config(SequentialConfig, config, overrides), log=log)


def sweep(config: str | Path | dict, overrides: Sequence[str] = (), resume: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search hyperparameters on the validation split, as `instructune sweep` does: a training config
    with a `sweep:` block (a YAML path or a dict). Returns what sweep.json holds."""
    base, settings = load_sweep(config if not isinstance(config, dict) else None, overrides,
                                data=config if isinstance(config, dict) else None)
    return _sweep(base, settings, resume=resume, log=log)


def _config(cls: type, config: Source, overrides: Sequence[str]) -> Any:
    if isinstance(config, cls):
        return _load(cls, None, list(overrides), data=to_dict(config)) if overrides else config
    if isinstance(config, dict):
        return _load(cls, None, list(overrides), data=config)
    return _load(cls, config, list(overrides))
