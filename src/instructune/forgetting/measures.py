"""Measures of catastrophic forgetting: per-example scores on fixed examples, before and after.

Every measure is a per-example score on fixed examples, so the drop from before to after is a
paired difference with a bootstrap interval:

    drop = mean_i (before_i - after_i)      # accuracy, ROUGE-L: positive = forgot
    drop = mean_i (after_i - before_i)      # cross-entropy measures (lower is better): positive = forgot

The general-behaviour probe is self-distillation: the original model answers held-out general
prompts greedily; afterwards, the mean cross-entropy of those same answers under the tuned model
says how far its behaviour moved away from the original's (before: the original's own CE).

Drops of different measures are in different units (accuracy and ROUGE-L fractions, cross-entropy
in nats per token), so wherever measures are combined (a sweep's second objective, a forgetting
budget, a report's combined column) each drop is taken relative to the original's score first:

    relative drop = drop / |before|                 # the share of the original score lost; unit-free
    mean relative drop = mean over measures of their relative drops

Every fixed example comes from one held-out split, named where a suite is built (`HeldOut`): what
chooses or watches (a search's trials, a run's trade-off selection and budget) reads validation
rows; what reports (a forgetting study, a sweep's one final scoring) reads test rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from instructune.data.packs import PACKS
from instructune.data.prompt import prompt_text
from instructune.data.sources import read_table
from instructune.data.splits import assign_splits
from instructune.data.task import SplitSpec, TaskSpec, load_split, subset
from instructune.data.templates import load_templates
from instructune.errors import InstructuneError
from instructune.evaluation.evaluate import evaluate_records
from instructune.evaluation.generate import generate
from instructune.evaluation.scoring import completion_logprobs
from instructune.metrics import rouge
from instructune.types import Model, Tokenizer

HeldOut = Literal["validation", "test"]
"""The split a retention suite reads: validation for what chooses or watches, test for what reports."""


@dataclass
class Measure:
    """Per-example scores of one retention measure on fixed examples."""

    name: str
    metric: str
    scores: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")


def drop(before: float, after: float, higher_is_better: bool) -> float:
    """How much of a score was lost (positive = forgot): before - after, or after - before for a measure where
    lower is better (cross-entropy)."""
    return before - after if higher_is_better else after - before


def bootstrap_drop(before: list[float], after: list[float], higher_is_better: bool, samples: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """Mean paired drop (positive = forgot) with a percentile bootstrap 95% interval over examples."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired scores needed, got {len(before)} before and {len(after)} after")
    diffs = [drop(b, a, higher_is_better) for b, a in zip(before, after)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return {"drop": sum(diffs) / n, "low": means[int(0.025 * samples)], "high": means[int(0.975 * samples) - 1],
            "n": n}


def relative_drop(drop: float, before: float) -> float:
    """drop / |before|: the share of the original score lost (positive = forgot), unit-free, so an
    accuracy measure and a cross-entropy measure can be averaged. An original score of exactly 0 has
    nothing to lose: a gain from it counts 0 (it is no share of anything, and a huge negative number
    would hide forgetting elsewhere in a mean); a loss from it (only a cross-entropy of 0, a perfect
    model, can lose from 0) counts its raw drop."""
    if before == 0:
        return max(drop, 0.0)
    return drop / abs(before)


def mean_relative_drop(drops: dict[str, dict[str, Any]]) -> float:
    """The combined forgetting of several measures: the mean of their `relative_drop`s (0 for none)."""
    values = [m["relative_drop"] for m in drops.values()]
    return sum(values) / len(values) if values else 0.0


def all_probe_prompts() -> list[str]:
    """Every general instruction shipped with the package, in file order."""
    text = resources.files("instructune").joinpath("probes/general_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def probe_capacity() -> int:
    """Prompts in each half of the shipped list: the most a probe can use."""
    return len(all_probe_prompts()) // 2


def probe_prompts(held_out: HeldOut, limit: int | None = None) -> list[str]:
    """General instructions for the general-behaviour probe, from two fixed, disjoint halves of the
    shipped list: the first half for test (what reports score), the second for validation (what a run
    watches and a search chooses on)."""
    prompts = all_probe_prompts()
    half = len(prompts) // 2
    part = prompts[:half] if held_out == "test" else prompts[half:2 * half]
    if limit and limit > len(part):
        raise InstructuneError(f"probe_prompts {limit}: each half (validation, test) of the shipped general "
                               f"prompts holds {len(part)}; ask for at most {len(part)}.")
    return part[:limit] if limit else part


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


def per_example_ce(model: Model, tok: Tokenizer, prompts: list[str], completions: list[str],
                   batch_size: int = 16, dtype: str = "float32") -> list[float]:
    """Cross-entropy per token of each completion given its (already formatted) prompt."""
    scores = completion_logprobs(model, tok, prompts, completions, batch_size, dtype=dtype)
    return [-lp / max(n, 1) for lp, n in scores]


def task_scores(model: Model, tok: Tokenizer, records: list[dict], template: Any, mode: str, batch_size: int = 16,
                max_new_tokens: int | None = None, dtype: str = "float32") -> tuple[str, list[float], dict[str, Any]]:
    """(metric name, per-example scores, the evaluation: metrics, per-example predictions, settings,
    timings) of one task on fixed records (the references' perplexity, which no score here uses, is not
    computed: it would read every prompt again)."""
    classify = template.task == "classification"
    res = evaluate_records(model, tok, records, task=template.task, choices=template.choices,
                           metrics=template.metrics, stop=template.stop, mode=mode if classify else "generate",
                           batch_size=batch_size, max_new_tokens=max_new_tokens or (8 if classify else 32),
                           dtype=dtype, perplexity=False)
    if classify:
        return "accuracy", [float(p["correct"]) for p in res["predictions"]], res
    scores = [rouge([p["prediction"]], [p["reference"]])["rougeL"]["f1"] for p in res["predictions"]]
    return "rougeL", scores, res


def general_probe(model: Model, tok: Tokenizer, prompts: list[str], answers: list[str] | None, batch_size: int = 16,
                  max_new_tokens: int = 48, dtype: str = "float32") -> tuple[list[str], list[float]]:
    """(the original's answers, their per-example CE under `model`); answers are generated when None."""
    texts = [prompt_text(tok, p) for p in prompts]
    if answers is None:
        answers = [a.strip() + (tok.eos_token or "") for a in
                   generate(model, tok, texts, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype)]
    return answers, per_example_ce(model, tok, texts, answers, batch_size, dtype)


def text_probe(model: Model, tok: Tokenizer, texts: list[str], batch_size: int = 8,
               dtype: str = "float32") -> list[float]:
    """Per-text cross-entropy of plain held-out text (no chat template): perplexity = exp(mean)."""
    return per_example_ce(model, tok, [""] * len(texts), texts, batch_size, dtype)


def transfer_measures(R: list[list[float]]) -> dict[str, Any]:
    """Forgetting and transfer of sequential training on tasks 1..T, from the score matrix R.

    Indexing: row j = 0..T is "after stage j" (row 0 = before any training; stage j trains
    task j); column i = 1..T is task i, stored at R[j][i - 1]. Every score is higher-is-better
    (accuracy, ROUGE-L F1). With T = 1 nothing can be forgotten or transferred: those are None.

        f_i  = max_{i <= j <= T-1} R[j][i] - R[T][i]      for i = 1..T-1
               forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"): the
               best score task i had after it was trained, minus its final score; positive = forgot.
               Chaudhry take the max over every stage before T; stages before i are left out here,
               since a task not yet trained on has nothing to forget.
        average_forgetting = mean_{i < T} f_i
        BWT  = mean_{i < T} (R[T][i] - R[i][i])           backward transfer (Lopez-Paz and Ranzato
               2017, "Gradient Episodic Memory", GEM): what later stages did to each task, from just
               after it was learnt; negative = forgot.
        FWT  = mean_{i > 1} (R[i-1][i] - R[0][i])          forward transfer (GEM, with the untrained
               model's score R[0][i] as the baseline): what earlier stages did for a task not yet
               trained on.
        final_average = mean_i R[T][i]                     GEM's ACC: every task after the last stage.
    """
    T = len(R) - 1
    if T < 1 or any(len(row) != T for row in R):
        raise ValueError(f"R must have T + 1 rows of T scores (row 0 = before training), got rows of "
                         f"{[len(row) for row in R]}")

    def at(j: int, i: int) -> float:  # 1-based task i after stage j
        return R[j][i - 1]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    forgetting = [max(at(j, i) for j in range(i, T)) - at(T, i) for i in range(1, T)]
    return {"forgetting": forgetting, "average_forgetting": mean(forgetting),
            "bwt": mean([at(T, i) - at(i, i) for i in range(1, T)]),
            "fwt": mean([at(i - 1, i) - at(0, i) for i in range(2, T + 1)]),
            "final_average": mean([at(T, i) for i in range(1, T + 1)])}
