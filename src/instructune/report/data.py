"""Read run folders: find every file a report can show, below the folders given, and group them.

What each producer writes, and what is read here:

    metrics.json (+ config.yaml, train_log.jsonl)   instructune train        -> TrainingRun
    eval.json                                       instructune eval         -> EvalRun
    forgetting.json (+ one training run per cure)   instructune forgetting   -> ForgettingRun
    sequential.json (+ one training run per stage)  instructune sequential   -> SequentialRun
    run_info.json                                   instructune demo         -> RunInfo

Nothing is recomputed: the report shows the numbers these files hold. A training run found
inside a study's folder (forgetting or sequential) is that study's run for one cure or stage,
so it is grouped under the study.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from instructune.errors import InstructuneError, collect
from instructune.types import JSON

REPORTABLE = ("metrics.json", "eval.json", "forgetting.json", "sequential.json", "sweep.json", "run_info.json")
"""The files a report is made of; a folder holding none of them (at any depth) has nothing to report."""
PRODUCERS = "`instructune train`, `eval`, `forgetting`, `sequential`, `sweep` or `demo`"


@dataclass
class TrainingRun:
    path: Path
    """The run folder (holds metrics.json)."""
    label: str
    """Its name in the report: the path relative to the folder given on the command line."""
    metrics: JSON
    config: JSON | None = None
    """config.yaml, when present."""
    log: list[JSON] = field(default_factory=list)
    """train_log.jsonl records, one per step and kind (a resumed run's repeated steps: the last wins)."""
    group: str = ""
    """Label of the study (forgetting or sequential) this run belongs to ("" for a stand-alone run)."""
    inspect: JSON | None = None
    """data_inspect.json: its first training examples token by token, trained tokens flagged."""

    @property
    def name(self) -> str:
        """Short name: the cure inside a study, else the label."""
        return self.path.name if self.group else self.label

    def curve(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of one logged quantity ("loss", "val_loss"), in step order."""
        return [(r["step"], r[key]) for r in self.log if isinstance(r.get(key), (int, float))]


@dataclass
class ResultFile:
    """A study's or command's JSON output: eval.json, forgetting.json, sequential.json (tasks, metrics, rows,
    matrix ((T+1) x T, row 0 = before training), measures, stages), sweep.json or run_info.json."""

    path: Path
    """The file."""
    label: str
    data: JSON


EvalRun = ForgettingRun = SequentialRun = SweepRun = RunInfo = ResultFile
"""Names by the file each one holds."""


@dataclass
class Runs:
    """Everything found below the folders given, in a stable order (by path)."""

    roots: list[Path]
    infos: list[RunInfo] = field(default_factory=list)
    trainings: list[TrainingRun] = field(default_factory=list)
    evals: list[EvalRun] = field(default_factory=list)
    forgettings: list[ForgettingRun] = field(default_factory=list)
    sequentials: list[SequentialRun] = field(default_factory=list)
    sweeps: list[SweepRun] = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)
    """Study label -> its kind, "forgetting" or "sequential"."""

    def groups(self) -> dict[str, list[TrainingRun]]:
        """Training runs by study: stand-alone runs under "", then one entry per study."""
        out: dict[str, list[TrainingRun]] = {}
        for run in sorted(self.trainings, key=lambda r: (r.group != "", r.group)):
            out.setdefault(run.group, []).append(run)
        return out


def discover(run_dirs: list[Path]) -> Runs:
    """Find and read every reportable file below `run_dirs` (folders, or such files themselves)."""
    roots = [Path(d) for d in run_dirs]
    if not roots:
        raise InstructuneError(f"no run folder given; pass one or more folders written by {PRODUCERS}.")
    found: dict[str, list[Path]] = {name: [] for name in REPORTABLE}
    for root in roots:
        files = _reportable_files(root)
        if not files:
            raise InstructuneError(
                f"{root}: nothing to report. Looked for {', '.join(REPORTABLE)} in it and every folder below it; "
                f"point at a folder written by {PRODUCERS}.")
        for f in files:
            if f not in found[f.name]:
                found[f.name].append(f)
    base = _label_base(roots)
    runs = Runs(roots=roots)
    folders = {f.parent: (_label(f.parent, base), kind) for kind in ("forgetting", "sequential")
               for f in sorted(found[f"{kind}.json"])}
    runs.studies = dict(folders.values())
    for f in sorted(found["run_info.json"]):
        runs.infos.append(RunInfo(f, _label(f.parent, base), _read_json(f)))
    for f in sorted(found["eval.json"]):
        runs.evals.append(EvalRun(f, _label(f.parent, base), _read_eval(f)))
    for f in sorted(found["forgetting.json"]):
        runs.forgettings.append(ForgettingRun(f, folders[f.parent][0], _read_forgetting(f)))
    for f in sorted(found["sequential.json"]):
        runs.sequentials.append(SequentialRun(f, folders[f.parent][0], _read_sequential(f)))
    for f in sorted(found["sweep.json"]):
        runs.sweeps.append(SweepRun(f, _label(f.parent, base), _read_sweep(f)))
    for f in sorted(found["metrics.json"]):
        study = folders.get(f.parent.parent, ("", ""))[0]  # a cure's run: "<study>/<cure>", however reached
        label = f"{study}/{f.parent.name}" if study else _label(f.parent, base)
        runs.trainings.append(_read_training(f.parent, label, study))
    return runs


def _reportable_files(root: Path) -> list[Path]:
    if not root.exists():
        raise InstructuneError(f"{root} does not exist; pass a run folder (or one of the files "
                               f"{', '.join(REPORTABLE)}).")
    if root.is_file():
        if root.name not in REPORTABLE:
            raise InstructuneError(f"{root} is not a report input; pass a run folder or one of "
                                   f"{', '.join(REPORTABLE)}.")
        return [root.resolve()]
    out = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # skip .tmp-best and the like
        out += [Path(folder, f).resolve() for f in sorted(files) if f in REPORTABLE]
    return out


def _label_base(roots: list[Path]) -> Path:
    """Labels are relative to the one folder given, or to the folder several given ones share."""
    dirs = [r.resolve() if r.is_dir() else r.resolve().parent for r in roots]
    return dirs[0] if len(dirs) == 1 else Path(os.path.commonpath(dirs))


def _label(folder: Path, base: Path) -> str:
    try:
        rel = folder.relative_to(base).as_posix()
    except ValueError:
        rel = folder.as_posix()
    return folder.name if rel in ("", ".") else rel


def _read_json(path: Path) -> JSON:
    """Parse a JSON object file; its error names the file, line and column."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InstructuneError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); re-run the "
                               "command that wrote it, or remove the file.") from None
    if not isinstance(data, dict):
        raise InstructuneError(f"{path}: expected a JSON object, got {type(data).__name__}; re-run the command "
                               "that wrote it, or remove the file.")
    return data


def _missing(obj: dict, keys: tuple[str, ...], where: str) -> list[str]:
    absent = [k for k in keys if k not in obj]
    return [f"{where} has no field {', '.join(map(repr, absent))}; fields present: {', '.join(obj) or 'none'}"] \
        if absent else []


def _read_eval(path: Path) -> JSON:
    data = _read_json(path)
    problems = _missing(data, ("results",), "the top level")
    for i, r in enumerate(data.get("results") or []):
        problems += _missing(r, ("setting", "shots", "metrics"), f"results[{i}]")
    collect(problems, f"cannot read {path} (written by `instructune eval`)")
    return data


def _read_forgetting(path: Path) -> JSON:
    data = _read_json(path)
    problems = _missing(data, ("cures",), "the top level")
    for i, c in enumerate(data.get("cures") or []):
        problems += _missing(c, ("cure", "target_metric", "target_before", "target_after", "gain", "retention"),
                             f"cures[{i}]")
    collect(problems, f"cannot read {path} (written by `instructune forgetting`)")
    return data


def _read_sequential(path: Path) -> JSON:
    data = _read_json(path)
    problems = _missing(data, ("tasks", "matrix", "measures"), "the top level")
    tasks, matrix = data.get("tasks") or [], data.get("matrix") or []
    shape = [len(row) if isinstance(row, list) else None for row in matrix]
    if "matrix" in data and shape != [len(tasks)] * (len(tasks) + 1):
        problems.append(f"matrix should have {len(tasks) + 1} rows (before training, then one per task) of "
                        f"{len(tasks)} scores (one per task), got rows of {shape}")
    problems += _missing(data.get("measures") or {}, ("forgetting", "bwt", "fwt"), "measures")
    collect(problems, f"cannot read {path} (written by `instructune sequential`; run it again to rewrite the file)")
    return data


def _read_sweep(path: Path) -> JSON:
    data = _read_json(path)
    collect(_missing(data, ("objective", "direction", "trials", "chosen"), "the top level"),
            f"cannot read {path} (written by `instructune sweep`; run it again to rewrite the file)")
    return data


def _read_training(folder: Path, label: str, group: str) -> TrainingRun:

    metrics = _read_json(folder / "metrics.json")
    config = None
    if (folder / "config.yaml").exists():
        try:
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise InstructuneError(f"{folder / 'config.yaml'}: not valid YAML ({e}); fix or remove it.") from None
    view = folder / "data_inspect.json"
    return TrainingRun(folder, label, metrics, config, read_train_log(folder / "train_log.jsonl"), group,
                       _read_json(view) if view.exists() else None)


def read_train_log(path: Path) -> list[JSON]:
    """train_log.jsonl records in step order; for a step logged twice (a resumed run) the last record wins.

    A record repeats another when it logs the same quantities at the same step. A step can hold
    several different records: the train loss, the validation scores ("val_*"), the retention drops
    watched while training ("drop/*"); none of them replaces another (a drop record written after the
    loss record of its step used to, which emptied a forgetting study's train-loss panel). A last
    line cut off mid-write (the run was killed) is skipped; a broken line elsewhere is an error.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    latest: dict[tuple[int, frozenset[str]], dict] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise InstructuneError(f"{path} line {n}: not valid JSON; fix or delete that line.") from None
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            latest[(rec["step"], frozenset(rec) - {"step"})] = rec  # a repeat keeps its first place in the step
    return [latest[k] for k in sorted(latest, key=lambda k: k[0])]


def setting_kind(result: JSON) -> str:
    """"tuned" for an adapter on a model ("M + run/adapter") or a saved tuned model folder, else by shots."""
    if result.get("kind") in ("base", "few-shot", "tuned"):
        return result["kind"]
    name = str(result["setting"])
    if " + " in name or Path(name).name in ("model", "adapter"):
        return "tuned"
    return "few-shot" if result.get("shots", 0) else "base"
