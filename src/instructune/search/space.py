"""A search space over training-config fields: parsed and checked before any trial runs, sampled by Optuna.

    params:
      optim.lr: {low: 1.0e-5, high: 1.0e-3, log: true}     # a float range (log-uniform)
      max_steps: {low: 20, high: 80, step: 20}             # an int range (both ends whole numbers)
      method.r: [8, 16, 32]                                # a list: one of these
      method.name: [lora, full]

A `method.<option>` parameter is conditional: it is sampled only for trials whose method has that
option (`method.r` for lora, not for full), so the search never builds a config a method refuses.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructune.config import yaml_fields
from instructune.methods import METHODS
from instructune.training.config import TrainConfig
from instructune.types import JSON, JSONValue

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Param:
    path: str
    """Dotted config field (`optim.lr`, `method.r`, `data.train_limit`)."""
    choices: tuple[JSONValue, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and float(self.low).is_integer() and float(self.high).is_integer() and (
            self.step is None or float(self.step).is_integer()) and not self.log

    def suggest(self, trial: optuna.Trial) -> JSONValue:
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.path, float(self.low), float(self.high), log=self.log, step=self.step)


def parse(params: JSON) -> tuple[list[Param], list[str]]:
    """The parameters, method.name first (it decides which method options apply); and every problem."""
    out, problems = [], []
    for path, spec in params.items():
        where = f"sweep.params.{path}"
        if (why := unknown_path(path)) is not None:
            problems.append(f"{where}: {why}")
            continue
        if isinstance(spec, list):
            if not spec:
                problems.append(f"{where}: an empty list; give the values to try, e.g. [8, 16, 32]")
            else:
                out.append(Param(path, choices=tuple(spec)))
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: give a list of values or a range {{low: ..., high: ...}}, got {spec!r}")
            continue
        param, problem = _range(path, spec, where)
        if problem:
            problems.append(problem)
        else:
            out.append(param)
    return sorted(out, key=lambda p: p.path != "method.name"), problems


def _range(path: str, spec: JSON, where: str) -> tuple[Param | None, str | None]:
    if "values" in spec or "choices" in spec:
        return None, f"{where}: a list and a range for one parameter; give one of them"
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown:
        return None, f"{where}: unknown key(s) {', '.join(unknown)}; a range has low, high, log, step"
    try:
        low, high = float(spec["low"]), float(spec["high"])
        step = float(spec["step"]) if spec.get("step") is not None else None
    except (KeyError, TypeError, ValueError):
        return None, f"{where}: a range needs numbers `low` and `high`, got {spec!r}"
    log = bool(spec.get("log", False))
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        return None, f"{where}: the range is empty or inverted (low {low:g} >= high {high:g}); give low < high"
    if log and low <= 0:
        return None, f"{where}: a log range must stay above zero (low {low:g}); raise low or drop `log: true`"
    if log and step is not None:
        return None, f"{where}: a log range cannot have a step; drop one of them"
    if step is not None and step <= 0:
        return None, f"{where}: step must be > 0, got {step:g}"
    keep_int = all(isinstance(spec.get(k), int) for k in ("low", "high")) and not log
    return Param(path, low=int(low) if keep_int else low, high=int(high) if keep_int else high, log=log,
                 step=step), None


def unknown_path(path: str) -> str | None:
    """Why `path` names no training-config field (None when it names one)."""
    parts = path.split(".")
    if parts[0] == "method" and len(parts) == 2:
        if parts[1] == "name" or any(parts[1] in m.option_names() for m in METHODS.values()):
            return None
        return (f"no method has an option '{parts[1]}'; options: "
                f"{', '.join(sorted({o for m in METHODS.values() for o in m.option_names()}))}")
    cls: type | None = TrainConfig
    for i, part in enumerate(parts):
        keys = yaml_fields(cls) if cls is not None and dataclasses.is_dataclass(cls) else {}
        if part not in keys:
            return f"'{'.'.join(parts[:i + 1])}' is not a training-config field (see `instructune train x --show-fields`)"
        hint = typing.get_type_hints(keys[part][0])[part]  # declared by the section itself, or a flat one in it
        inner = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        cls = inner[0] if inner else None
    return None if cls is None else f"'{path}' is a section; name one of its fields"


def sample(trial: optuna.Trial, params: list[Param], base: JSON) -> JSON:
    """The trial's values by path; a method option is skipped when the trial's method lacks it."""
    chosen: JSON = {}
    for p in params:
        if p.path.startswith("method.") and p.path != "method.name":
            method = chosen.get("method.name", (base.get("method") or {}).get("name", "lora"))
            if p.path.split(".", 1)[1] not in METHODS[method].option_names():
                continue
        chosen[p.path] = p.suggest(trial)
    return chosen


def apply(base: JSON, values: JSON) -> JSON:
    """`base` (a config as a dict) with dotted `values` set; a changed method keeps only its own options."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    if "method.name" in values and values["method.name"] != (out.get("method") or {}).get("name", "lora"):
        out["method"] = {"name": values["method.name"]}
    for path, value in values.items():
        node = out
        *head, last = path.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def current(params: list[Param], base: JSON) -> JSON:
    """The config's own value of each parameter that lies in its space: the study's first trial, so every
    trial is measured against the config the search started from."""
    out = {}
    for p in params:
        node: JSONValue = base
        for part in p.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        inside = (node in p.choices if p.choices is not None else
                  isinstance(node, (int, float)) and not isinstance(node, bool) and p.low <= node <= p.high)
        if node is not None and inside:
            out[p.path] = node
    return out


def grid_only(params: list[Param]) -> bool:
    """Whether every parameter is a list (a grid sampler then tries each combination once)."""
    return all(p.choices is not None for p in params)
