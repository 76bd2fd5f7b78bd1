"""A retention suite: fixed examples of a target task and of every measure a model should keep.

It holds (task, template) retention tasks scored per example, a general-behaviour probe (the
original model's own answers to held-out general prompts, see `measures.general_probe`) and a
plain-text perplexity probe, every one of them from the split the suite is built for:

    RetentionSuite.build(spec, split, seed, held_out="validation")   # what chooses or watches: trials, select, budget
    RetentionSuite.build(spec, split, seed, held_out="test")         # what reports: a study's table, a sweep's final score

so nothing that chooses reads a test row. `score` gives every per-example score of one model;
`drops` compares two such scorings measure by measure, raw and relative to the original's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from instructune.data.packs import PACKS
from instructune.data.prompt import prompt_text
from instructune.data.sources import read_table
from instructune.data.splits import assign_splits
from instructune.data.task import SplitSpec, TaskSpec, load_split, subset, templates
from instructune.data.templates import load_templates
from instructune.errors import InstructuneError
from instructune.evaluation.evaluate import select
from instructune.forgetting.measures import (
    HeldOut,
    bootstrap_drop,
    general_probe,
    per_example_ce,
    probe_prompts,
    relative_drop,
    task_scores,
    text_probe,
)
from instructune.metrics import higher_is_better
from instructune.types import Model, Tokenizer


@dataclass
class RetentionTask(TaskSpec):
    """A task to keep: its source (TaskSpec fields) with one template, and how it is scored."""

    template: str = ""
    """Its template id (one)."""
    mode: Literal["generate", "likelihood"] = "generate"
    """Classification scoring: generate an answer, or pick the most likely choice."""
    limit: int = 100
    """Held-out examples scored (the same ones before and after)."""

    def task_spec(self) -> TaskSpec:
        return TaskSpec(self.source, [self.template], self.template_file)

    def problems(self) -> list[str]:
        out = [] if self.template else ["template: required: the one template id this task is scored with"]
        if self.templates:
            out.append("templates: a retention task is scored with one `template`; remove `templates`")
        return out


SHOWN_ANSWERS = 4
"""Answers kept per generation task, for the report's side-by-side view."""

Fixed = tuple[list[dict], Any, str]
"""(records, template, scoring mode) of one task."""


def fixed_examples(task: TaskSpec, template: str, split: SplitSpec, limit: int, seed: int, *,
                   held_out: HeldOut) -> tuple[list[dict], Any]:
    """A task's fixed records of one template from its `held_out` split (a seeded subset of `limit`),
    and that template."""
    records = load_split(task, split, held_out, template)
    return select(records, limit, seed), templates(task, split)[template]  # `instructune eval`'s own subset


@dataclass
class TargetTask:
    """The task a study tuned for, scored beside what it keeps."""

    task: TaskSpec
    template: str
    """Its template id (one)."""
    mode: Literal["generate", "likelihood"]
    limit: int
    """Held-out examples scored."""


@dataclass
class SuiteSpec:
    """What a retention suite measures: the fields every config section naming one shares (training's
    `retention:`, the forgetting study, a sweep's `forgetting:`), passed whole to `RetentionSuite.build`."""

    tasks: list[RetentionTask]
    """Tasks to keep, each scored on `limit` rows of the held-out split."""
    probe_prompts: int
    """General-behaviour probe prompts (0 = off)."""
    probe_tokens: int
    """Longest original answer generated for the probe."""
    text_source: str | None
    """Plain-text perplexity probe source (None = off)."""
    text_limit: int
    """Texts in the perplexity probe."""
    text_words: int = 120
    """Each probe text is cut to this many words."""
    target: TargetTask | None = None
    """None for a suite that only watches what a run keeps (its target is validated apart)."""


@dataclass
class RetentionSuite:
    """Fixed examples of the target and of every retention measure."""

    target: Fixed | None
    """None for a suite that only watches what a run keeps (its target is validated apart)."""
    tasks: dict[str, Fixed]
    probe: list[str]
    texts: list[str]
    probe_tokens: int
    dtype: str = "float32"

    @classmethod
    def build(cls, spec: SuiteSpec, split: SplitSpec, seed: int, dtype: str = "float32", *,
              held_out: HeldOut) -> RetentionSuite:
        """Every measure's fixed examples from the `held_out` split under `split` (never trained on):
        each task's rows of that split, that half of the general prompts, that split's plain texts."""
        t = spec.target
        fixed = (*fixed_examples(t.task, t.template, split, t.limit, seed, held_out=held_out), t.mode) if t else None
        tasks = {f"{task.source}/{task.template}": (*fixed_examples(task.task_spec(), task.template, split,
                                                                     task.limit, seed, held_out=held_out), task.mode)
                 for task in spec.tasks}
        texts = (held_out_texts(spec.text_source, split, spec.text_limit, spec.text_words, seed, held_out=held_out)
                 if spec.text_source else [])
        probe = probe_prompts(held_out, spec.probe_prompts) if spec.probe_prompts else []
        return cls(fixed, tasks, probe, texts, spec.probe_tokens, dtype)

    def score(self, model: Model, tok: Tokenizer, probe_answers: list[str] | None, log: Any = None,
              cheap: bool = False) -> dict[str, Any]:
        """Every per-example score of `model`; the probe scores the original's answers (generated when None).
        Each measure is announced on `log` as it starts (a suite takes minutes on a CPU). `cheap` scores
        without free generation: classification by likelihood, other tasks by their reference's
        cross-entropy (what a run measures while it trains)."""
        def pack(metric: str, scores: list[float]) -> dict[str, Any]:
            return {"metric": metric, "scores": scores, "mean": sum(scores) / len(scores)}

        say = log or (lambda *_: None)
        out: dict[str, Any] = {"target": None, "measures": {}, "probe_answers": probe_answers}
        if self.target is not None:
            recs, t, mode = self.target
            say(f"  target task: {len(recs)} examples ({mode})")
            metric, scores, evaluation = task_scores(model, tok, recs, t, mode, dtype=self.dtype)
            out["target"] = {**pack(metric, scores), "evaluation": evaluation}  # metrics, predictions: side by side
        for key, (recs, t, mode) in self.tasks.items():
            say(f"  {key}: {len(recs)} examples ({mode})")
            if cheap and t.task != "classification":
                texts = [prompt_text(tok, r["prompt"]) for r in recs]
                metric, scores = "cross_entropy", per_example_ce(model, tok, texts, [r["completion"] for r in recs],
                                                                 dtype=self.dtype)
                out["measures"][key] = pack(metric, scores)
                continue
            metric, scores, evaluation = task_scores(model, tok, recs, t, "likelihood" if cheap else mode,
                                                     dtype=self.dtype)
            out["measures"][key] = pack(metric, scores)
            if t.task != "classification":  # the first answers, to show beside the original's
                out["measures"][key]["answers"] = [{k: p[k] for k in ("id", "prompt", "reference", "prediction")}
                                                   for p in evaluation["predictions"][:SHOWN_ANSWERS]]
        if self.probe:
            say(f"  general-behaviour probe: {len(self.probe)} prompts"
                + (", generating the original's answers" if probe_answers is None else ""))
            answers, ce = general_probe(model, tok, self.probe, probe_answers, max_new_tokens=self.probe_tokens,
                                        dtype=self.dtype)
            out["probe_answers"] = answers
            out["measures"]["general-probe"] = pack("cross_entropy", ce)
        if self.texts:
            say(f"  text perplexity: {len(self.texts)} texts")
            out["measures"]["text-perplexity"] = pack("cross_entropy", text_probe(model, tok, self.texts,
                                                                                   dtype=self.dtype))
        return out


def drops(before: dict[str, Any], after: dict[str, Any], samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per measure: before and after means, the paired drop with its bootstrap interval (in the measure's
    own units), and the drop relative to the original's score (unit-free; `measures.relative_drop`)."""
    out = {}
    for key, b in before["measures"].items():
        a = after["measures"][key]
        stats = bootstrap_drop(b["scores"], a["scores"], higher_is_better(b["metric"]), samples, seed)
        out[key] = {"metric": b["metric"], "before": b["mean"], "after": a["mean"], **stats,
                    "relative_drop": relative_drop(stats["drop"], b["mean"])}
    return out


def held_out_texts(source: str, split: SplitSpec, limit: int, words: int, seed: int, *,
                   held_out: HeldOut) -> list[str]:
    """Plain texts of `source` from its `held_out` split, each cut to `words` words (a seeded subset):
    a pack's rows of that split (never trained on, replay included), or a file's rows dealt into
    train / validation / test by `split`'s seed and fractions."""
    table = read_table(source)
    name = table.text_field or "text"
    if source in PACKS:  # the rows of its first template's split, as a run on that template holds out
        rows = load_split(TaskSpec(source, [next(iter(load_templates(source)))]), split, held_out)
        keep = {r["id"].rsplit("/", 1)[0] for r in rows}
    else:
        parts = assign_splits([str(r.get(name, "")) for r in table.rows], [None] * len(table.rows),
                              split.fractions, split.seed)
        keep = {i for i, part in zip(table.ids, parts) if part == held_out}
    texts = [" ".join(str(r[name]).split()[:words]) for r, i in zip(table.rows, table.ids) if i in keep and r.get(name)]
    if not texts:
        raise InstructuneError(f"text_source {source} has no '{name}' texts in its {held_out} split for the "
                               "perplexity probe; point text_source at a pack or a file with a `text` column "
                               "(and enough rows), or set it to null.")
    return subset(texts, limit, seed)


def answer_rows(before: dict[str, Any], after: dict[str, dict[str, Any]],
                shown: int = SHOWN_ANSWERS) -> dict[str, list[dict]]:
    """forgetting.json's `answers`: per generation measure, the first `shown` examples with the original's
    answer and each cure's (from the scores' `answers`)."""
    out = {}
    for key, m in before.get("measures", {}).items():
        if not m.get("answers"):
            continue
        rows = []
        for n, a in enumerate(m["answers"][:shown]):
            cures = {name: s["measures"][key]["answers"][n]["prediction"] for name, s in after.items()
                     if len(s.get("measures", {}).get(key, {}).get("answers") or []) > n}
            rows.append({**{k: a[k] for k in ("id", "prompt", "reference")},
                         "answers": {"original": a["prediction"], **cures}})
        out[key] = rows
    return out
