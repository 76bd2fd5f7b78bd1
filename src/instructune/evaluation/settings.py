"""What an evaluation scores, and how: one typed value, passed whole (CLI, API, demo alike).

    settings = EvalSettings(TaskSpec("rotten-tomatoes", ["sentiment"]), template="sentiment", shots=[0, 5], limit=50)
    report = evaluate(["smollm2-135m-instruct"], [], settings)     # recipes.evaluate

`EvalSettings.of(data=..., template=..., data_seed=...)` builds one from the flat keywords that
`instructune eval`'s flags and `instructune.evaluate(...)` take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

from instructune.data.formats import CONVERSATIONS
from instructune.data.task import DEFAULT_FRACTIONS, SplitSpec, TaskSpec
from instructune.errors import InstructuneError
from instructune.evaluation.evaluate import MODES

SplitName = Literal["train", "validation", "test"]
DType = Literal["auto", "float32", "bfloat16", "fp32", "bf16", "fp16"]  # the names hardware.eval_dtype reads


@dataclass
class EvalSettings:
    task: TaskSpec
    """The data and the templates its dataset is built with: they decide the stratifying label, so a run's
    own templates (with its split) give exactly the rows that run held out."""
    split: SplitSpec = field(default_factory=SplitSpec)
    """How the rows are cut into train, validation and test (seed and fractions): a run's own split."""
    held_out: SplitName = "test"
    """The split whose rows are scored; few-shot exemplars always come from train."""
    template: str | None = None
    """The template scored; None = the dataset's only one (a data format's, like alpaca)."""
    shots: list[int] = field(default_factory=lambda: [0])
    """In-context exemplar counts, each a setting of its own on the same examples."""
    limit: int | None = None
    """Score this many examples, the same seeded subset for every setting; None = the whole split."""
    mode: Literal["generate", "likelihood"] = "generate"
    """Classification: generate an answer, or pick the most likely choice (other tasks always generate)."""
    seed: int = 0
    """Seed of the scored subset and of each example's exemplars."""
    batch_size: int = 16
    """Examples per forward pass."""
    max_new_tokens: int | None = None
    """Longest generated answer in tokens; None = 8 for classification, 64 otherwise."""
    dtype: DType = "auto"
    """float32, bfloat16 (autocast), or auto: measured on this machine (see `instructune doctor`)."""

    def problems(self) -> list[str]:
        out = [f"split.{p}" for p in self.split.problems()]
        if not self.task.source:
            out.append("task.source is empty; name a data pack, a data file or a dataset folder")
        if self.held_out not in get_args(SplitName):
            out.append(f"held_out must be one of {', '.join(get_args(SplitName))}, got {self.held_out!r}")
        if not self.shots or min(self.shots) < 0:
            out.append(f"shots needs counts >= 0, like 0,1,5; got {list(self.shots)}")
        for name in ("limit", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"{name} must be at least 1, got {value}")
        if self.mode not in MODES:
            out.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dtype not in get_args(DType):
            out.append(f"dtype must be one of {', '.join(get_args(DType))}, got {self.dtype!r}")
        return out

    @classmethod
    def of(cls, data: str, template: str | None = None, split: SplitName = "test", *,
           template_file: str | None = None, data_seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
           built_with: Sequence[str] | None = None, data_format: str = "auto",
           **rest: int | str | Sequence[int] | None) -> EvalSettings:
        """The settings of `instructune eval`'s flat keywords: `data_seed` and `fractions` cut the split,
        `split` names the one scored, `built_with` are the templates the dataset was built with (default:
        `template` alone); `rest` are the fields of the same name (shots, limit, mode, seed, ...)."""
        own = {f.name for f in fields(cls)} - {"task", "split", "held_out", "template"}
        unknown = sorted(set(rest) - own)
        if unknown:
            raise InstructuneError(f"unknown evaluation setting(s) {', '.join(unknown)}; settings: data, template, "
                                   f"split, template_file, data_seed, fractions, built_with, data_format, "
                                   f"{', '.join(sorted(own))}.")
        if template in CONVERSATIONS or template == "text":  # a format named as its template
            data_format, template = template, None
        named = list(built_with or ([template] if template else []))
        task = TaskSpec(data, named if data_format in ("auto", "template") else [], template_file, data_format)
        return cls(task, SplitSpec(data_seed, list(fractions)), split, template, **rest)
