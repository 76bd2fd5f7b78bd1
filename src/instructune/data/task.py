"""A task and a split, each one value: where a task's rows come from and how they are cut.

    task, split = TaskSpec("rotten-tomatoes", ["sentiment"]), SplitSpec(seed=3)
    test = load_split(task, split, "test")        # the records a run with this task and split held out

Every config section that names a task (`data`, `keep`, a mixture's tasks) is a TaskSpec with its
own extras, and every run's split is a SplitSpec, so the same pair always means the same rows:
rows are split before templates are applied, deterministically for a seed (see `splits`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from instructune.data.build import dataset_templates, prepare, read_split
from instructune.data.splits import DEFAULT_FRACTIONS
from instructune.data.templates import Template


@dataclass
class TaskSpec:
    source: str
    """A data pack name (`instructune data list`), a CSV/JSONL/Parquet file, a hub dataset
    `owner/name[:split]`, or a dataset folder built by `instructune data build`."""
    templates: list[str] = field(default_factory=list)
    """Template ids to render (several ids mix templates); empty = every template of the pack, the
    templates file or the built folder."""
    template_file: str | None = None
    """A user YAML file of templates, instead of the pack's own (needed for a plain data file)."""
    format: Literal["auto", "template", "alpaca", "messages", "sharegpt", "text"] = "auto"
    """How rows become examples: `template` (through templates), a data format read as it is (alpaca
    records, `messages` or `sharegpt` conversations, plain `text`), or auto: templates when any are
    named or the source is a data pack, else the format the rows' fields show."""

    def task_spec(self) -> TaskSpec:
        """This task alone, without the extras of the section that names it."""
        return TaskSpec(self.source, list(self.templates), self.template_file, self.format)

    def built_folder(self) -> Path | None:
        """The source itself, when it is a dataset folder `instructune data build` wrote."""
        path = Path(self.source)
        return path if path.is_dir() and (path / "train.jsonl").exists() else None


@dataclass
class SplitSpec:
    seed: int = 0
    """Seed of the train/validation/test split."""
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    """Train, validation and test fractions of the rows."""

    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.seed, list(self.fractions))

    def problems(self) -> list[str]:
        out = [] if 0 <= self.seed < 2**32 else [f"seed must be in 0..{2**32 - 1}, got {self.seed}"]
        if (len(self.fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in self.fractions)
                or abs(sum(self.fractions) - 1) > 1e-6):
            out.append(f"fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        return out


def dataset(task: TaskSpec, split: SplitSpec) -> Path:
    """The built dataset folder of a task and split: the source itself if it is one, else built once
    and cached under a hash of every input (`data.build.prepare`)."""
    return task.built_folder() or prepare(task.source, list(task.templates), seed=split.seed,
                                          fractions=tuple(split.fractions), template_file=task.template_file,
                                          fmt=task.format)


def templates(task: TaskSpec, split: SplitSpec) -> dict[str, Template]:
    """The task's templates by id, as its dataset was built with them (a built folder knows its own)."""
    return dataset_templates(dataset(task, split))


def load_split(task: TaskSpec, split: SplitSpec, name: str, template: str | None = None) -> list[dict]:
    """The records of one split (train, validation or test), optionally of one template only."""
    records = read_split(dataset(task, split), name)
    return [r for r in records if r["template"] == template] if template else records


def subset(records: list, limit: int | None, seed: int) -> list:
    """The same seeded subset every time (kept in file order); all of them without a limit."""
    if limit is None or len(records) <= limit:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
