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

from instructune.data.prompt import prompt_text
from instructune.data.task import SplitSpec, TaskSpec, load_split, templates
from instructune.evaluation.evaluate import select
from instructune.forgetting.kinds import KINDS, general_probe, text_perplexity
from instructune.forgetting.measures import (
    HeldOut,
    bootstrap_drop,
    per_example_ce,
    relative_drop,
    task_scores,
)
from instructune.metrics import higher_is_better
from instructune.types import JSON, Log, Model, Tokenizer


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
    kinds: dict[str, object]
    """The other kinds of measure (`forgetting.kinds`), each with its options, in registry order."""
    target: TargetTask | None = None
    """None for a suite that only watches what a run keeps (its target is validated apart)."""

    def kinds_on(self) -> list[str]:
        """The keys of the kinds its options turn on, in registry order."""
        return [key for key, options in self.kinds.items() if KINDS[key].on(options)]


def suite_spec(tasks: list[RetentionTask], probe: general_probe.Options, texts: text_perplexity.Options,
               measures: dict[str, object], target: TargetTask | None = None) -> SuiteSpec:
    """A SuiteSpec from a section's own fields for the two shipped kinds plus its `measures:` (already read)."""
    chosen = {general_probe.KEY: probe, text_perplexity.KEY: texts, **measures}
    return SuiteSpec(tasks, {key: chosen[key] for key in KINDS if key in chosen}, target)


@dataclass
class RetentionSuite:
    """Fixed examples of the target and of every retention measure."""

    target: Fixed | None
    """None for a suite that only watches what a run keeps (its target is validated apart)."""
    tasks: dict[str, Fixed]
    inputs: dict[str, list[str]]
    """Each other kind's fixed inputs (prompts, texts), by its key; kinds with none are off."""
    options: dict[str, object]
    """Each kind's options."""
    dtype: str = "float32"

    @property
    def probe(self) -> list[str]:
        return self.inputs.get(general_probe.KEY, [])

    @property
    def texts(self) -> list[str]:
        return self.inputs.get(text_perplexity.KEY, [])

    @classmethod
    def build(cls, spec: SuiteSpec, split: SplitSpec, seed: int, dtype: str = "float32", *,
              held_out: HeldOut) -> RetentionSuite:
        """Every measure's fixed examples from the `held_out` split under `split` (never trained on):
        each task's rows of that split, and each other kind's inputs from that side (`forgetting.kinds`)."""
        t = spec.target
        fixed = (*fixed_examples(t.task, t.template, split, t.limit, seed, held_out=held_out), t.mode) if t else None
        tasks = {f"{task.source}/{task.template}": (*fixed_examples(task.task_spec(), task.template, split,
                                                                     task.limit, seed, held_out=held_out), task.mode)
                 for task in spec.tasks}
        inputs = {key: KINDS[key].inputs(spec.kinds[key], split, seed, held_out) for key in spec.kinds_on()}
        return cls(fixed, tasks, inputs, spec.kinds, dtype)

    def score(self, model: Model, tok: Tokenizer, original: JSON | None = None, log: Log | None = None,
              cheap: bool = False) -> JSON:
        """Every per-example score of `model`, against `original` (the original model's own scoring, None when
        this is it: the general probe then generates its answers). Each measure is announced on `log` as it
        starts (a suite takes minutes on a CPU). `cheap` scores without free generation: classification by
        likelihood, other tasks by their reference's cross-entropy (what a run measures while it trains)."""
        def pack(metric: str, scores: list[float]) -> JSON:
            return {"metric": metric, "scores": scores, "mean": sum(scores) / len(scores)}

        say = log or (lambda *_: None)
        states = dict((original or {}).get("state") or {})
        out: JSON = {"target": None, "measures": {}, "state": states}
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
        for key, items in self.inputs.items():
            say(f"  {key}: {len(items)} inputs" + ("" if original is not None else " (the original's own)"))
            scored = KINDS[key].score(items, model, tok, self.options[key], self.dtype,
                                      states.get(key) if original is not None else None)
            out["measures"][key] = pack(scored.metric, scored.scores)
            if scored.state is not None:
                states[key] = scored.state
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
