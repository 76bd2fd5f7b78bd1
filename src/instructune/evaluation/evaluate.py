"""Evaluate a model on rendered records: predictions, metrics, reference cross-entropy, timings.

Classification is the one task with answer choices and labels; every other task (generation,
summarization, qa, ...) is scored as free text against the reference completion.

Records are dicts with `id`, `prompt`, `completion` (the reference answer) and, for
classification, `label` (a key of `choices`). The prompt the model sees is the chat template's
user turn (few-shot exemplars as earlier turns) or plain text for a model without one.

Modes: "generate" decodes greedily and, for classification, maps the answer to a label through
the answer choices ("invalid" when none or several match); "likelihood" appends each choice's
answer text as the assistant's reply and picks the most likely one, so it never gives "invalid".
Either way the mean cross-entropy of the reference completions is reported (one forward pass).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from instructune.data import chat, chat_template
from instructune.errors import InstructuneError, collect
from instructune.evaluation.fewshot import format_prompt, pick_exemplars
from instructune.evaluation.generate import encode_prompts, generate_batch
from instructune.evaluation.scoring import NORMALIZE, choice_logprobs, mean_completion_ce, pick_choices
from instructune.metrics import INVALID, TEMPLATE_METRICS, compute, cross_entropy, map_to_label
from instructune.types import Model, Tokenizer

MODES = ("generate", "likelihood")
STOPS = ("newline", "eos")


def check_settings(records: list[dict], *, task: str, choices: dict | None, metrics: list[str], stop: str,
                   mode: str, shots: int, train_records: list[dict] | None, normalize: str = "none",
                   dtype: str = "float32") -> None:
    """Collect every problem with the settings and records, and raise them together."""
    problems = []
    if not metrics:
        problems.append(f"the template lists no metric; add `metrics:` with some of {', '.join(TEMPLATE_METRICS)}")
    unknown = [m for m in metrics if m not in TEMPLATE_METRICS]
    if unknown:
        problems.append(f"unknown metric(s) {', '.join(map(repr, unknown))} in the template's `metrics`; "
                        f"known metrics: {', '.join(TEMPLATE_METRICS)}")
    if mode not in MODES:
        problems.append(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    if stop not in STOPS:
        problems.append(f"unknown stop '{stop}' in the template; use one of {', '.join(STOPS)}")
    if task == "classification" and not choices:
        problems.append("a classification template needs `choices` (label -> answer text); add them to the template")
    if mode == "likelihood" and task != "classification":
        problems.append(f"mode 'likelihood' picks among answer choices, and task '{task}' has none; use mode "
                        "'generate'")
    if normalize not in NORMALIZE:
        problems.append(f"unknown normalize '{normalize}'; use one of {', '.join(NORMALIZE)}")
    if dtype not in ("float32", "bfloat16"):
        problems.append(f"unknown dtype '{dtype}'; use float32 or bfloat16 (bf16 autocast)")
    if shots < 0:
        problems.append(f"shots must be >= 0, got {shots}")
    if shots > 0 and not train_records:
        problems.append(f"shots={shots} needs exemplars from a train split, but no train records were given; "
                        "pass the pack's train split or set shots=0")
    if not records:
        problems.append("the evaluation split is empty; check the data pack and its split sizes")
    problems += _record_problems(records, task, choices)
    collect(problems, "cannot evaluate")


def _record_problems(records: list[dict], task: str, choices: dict | None) -> list[str]:
    problems = []
    for i, r in enumerate(records):
        missing = [f for f in ("id", "prompt", "completion") if f not in r]
        if task == "classification" and "label" not in r:
            missing.append("label")
        if missing:
            problems.append(f"record {i} has no field {', '.join(missing)}; fields present: {', '.join(r)}")
        elif task == "classification" and choices and str(r["label"]) not in choices:
            problems.append(f"record {r['id']!r}: label {r['label']!r} is not among the template's choices "
                            f"({', '.join(choices)})")
        if len(problems) >= 10:
            break
    dupes = [i for i, n in Counter(str(r.get("id")) for r in records).items() if n > 1]
    if dupes:
        problems.append(f"record ids must be unique; repeated: {', '.join(dupes[:5])}")
    return problems


def select(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """A seeded sample of `limit` records, ordered by id: the same subset for every model and shot count."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise InstructuneError(f"limit must be at least 1, got {limit}; leave it unset to use every record")
    by_id = {str(r["id"]): r for r in records}
    return [by_id[i] for i in sorted(random.Random(seed).sample(sorted(by_id), limit))]


def build_prompts(tokenizer: Tokenizer, records: list[dict], shots: int, train_records: list[dict] | None,
                  seed: int, raw: bool) -> list[str]:
    """Each record's model input; exemplars are drawn per record (seeded by its id) from the train split."""
    texts = []
    # conversations need a chat template: a model without one (or `raw`) reads them in the plain chat format
    fallback = None if getattr(tokenizer, "chat_template", None) and not raw else chat_template.FALLBACKS["plain"]
    for r in records:
        exemplars = pick_exemplars(train_records or [], shots, seed=f"{seed}:{r['id']}", exclude_id=r["id"])
        if "messages" in r:  # few-shot exemplars are earlier conversations
            texts.append(chat.generation_prompt(tokenizer, r["messages"], [e["messages"] for e in exemplars],
                                                chat_template=fallback))
        else:
            texts.append(format_prompt(tokenizer, r["prompt"], [(e["prompt"], e["completion"]) for e in exemplars],
                                       raw))
    return texts


def nest(flat: dict[str, float]) -> dict[str, Any]:
    """Headline numbers at the top; slash keys ("rouge1/precision") nested under "detail"."""
    out: dict[str, Any] = {k: v for k, v in flat.items() if "/" not in k}
    detail: dict[str, Any] = {}
    for key, value in flat.items():
        if "/" in key:
            *path, leaf = key.split("/")
            node = detail
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
    if detail:
        out["detail"] = detail
    return out


def predict(model: Model, tokenizer: Tokenizer, texts: list[str], *, task: str, choices: dict | None, stop: str,
            mode: str, batch_size: int, max_new_tokens: int, dtype: str,
            normalize: str) -> tuple[list[str], list[str] | None, int, list[list[tuple[float, int]]] | None]:
    """(answer texts, predicted labels or None, prompts truncated to fit the context, and in likelihood
    mode each prompt's (log-probability, tokens) of every choice, in `choices` order)."""
    context = getattr(model.config, "max_position_embeddings", None)
    max_prompt = context - max_new_tokens if context else None
    if mode == "generate":
        gen = generate_batch(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             stop_at_newline=stop == "newline", max_prompt_tokens=max_prompt, dtype=dtype)
        answers = [t.strip() for t in gen.texts]
        labels = [map_to_label(a, choices) for a in answers] if task == "classification" else None
        return answers, labels, gen.truncated, None
    rows = choice_logprobs(model, tokenizer, texts, list(choices.values()), batch_size, context, dtype)
    labels = pick_choices(rows, choices, normalize)
    return [choices[label] for label in labels], labels, encode_prompts(tokenizer, texts, max_prompt)[1], rows


def _gold_ce(records: list[dict], choices: dict | None, rows: list | None) -> tuple[float, float] | None:
    """The references' mean cross-entropy and perplexity from the likelihood scores already computed, when
    every reference is its label's choice text (the same tokens the separate pass would score), else None."""
    if rows is None or not choices or any(r.get("completion") != choices.get(str(r.get("label"))) for r in records):
        return None
    order = list(choices)
    gold = [row[order.index(str(r["label"]))] for r, row in zip(records, rows, strict=True)]
    ce = cross_entropy([-lp for lp, _ in gold], [n for _, n in gold])
    return ce["cross_entropy"], ce["perplexity"]


def evaluate_records(model: Model, tokenizer: Tokenizer, records: list[dict], *, task: str, choices: dict | None,
                     metrics: list[str], stop: str = "newline", mode: str = "generate", shots: int = 0,
                     train_records: list[dict] | None = None, limit: int | None = None, seed: int = 0,
                     batch_size: int = 16, max_new_tokens: int = 64, raw: bool = False,
                     dtype: str = "float32", normalize: str = "none", perplexity: bool = True) -> dict[str, Any]:
    """Predict every (or `limit`) record, score the predictions, and report the settings and speed.

    `dtype="bfloat16"` runs under bf16 autocast; `normalize` is the likelihood mode's length
    normalisation ("none", "tokens", "chars"). `perplexity=False` skips the references'
    cross-entropy where it would take a second pass over every prompt (`cross_entropy` and `perplexity` are
    then None); likelihood scoring of label references has them from its own scores either way.
    """
    check_settings(records, task=task, choices=choices, metrics=metrics, stop=stop, mode=mode, shots=shots,
                   train_records=train_records, normalize=normalize, dtype=dtype)
    records = select(records, limit, seed)
    texts = build_prompts(tokenizer, records, shots, train_records, seed, raw)
    references = [r["completion"] for r in records]

    start = time.perf_counter()
    predictions, labels, truncated, choice_scores = predict(
        model, tokenizer, texts, task=task, choices=choices, stop=stop, mode=mode, batch_size=batch_size,
        max_new_tokens=max_new_tokens, dtype=dtype, normalize=normalize)
    seconds = time.perf_counter() - start
    # likelihood scoring has already read every reference: its scores give the perplexity, at no cost
    ce, ppl = _gold_ce(records, choices, choice_scores) or ((None, None) if not perplexity else mean_completion_ce(
        model, tokenizer, texts, references, batch_size=batch_size,
        max_length=getattr(model.config, "max_position_embeddings", None), dtype=dtype))
    ce_seconds = time.perf_counter() - start - seconds

    rows = [{"id": r["id"], "prompt": t, "reference": ref, "prediction": p}
            for r, t, ref, p in zip(records, texts, references, predictions, strict=True)]
    if labels is not None:
        gold = [str(r["label"]) for r in records]
        scores = compute(metrics, labels, gold, labels=list(choices))
        invalid = sum(label == INVALID for label in labels)
        scores.update(invalid=float(invalid), invalid_rate=invalid / len(labels))
        for row, g, label in zip(rows, gold, labels, strict=True):
            row.update(label=g, predicted_label=label, correct=label == g)
    else:
        scores = compute(metrics, predictions, references)
    return {
        "metrics": {**nest(scores), "cross_entropy": ce, "perplexity": ppl},
        "predictions": rows,
        "settings": {"task": task, "mode": mode, "metrics": list(metrics), "stop": stop, "shots": shots,
                     "limit": limit, "n": len(records), "seed": seed, "batch_size": batch_size,
                     "max_new_tokens": max_new_tokens, "raw": raw, "dtype": dtype, "normalize": normalize,
                     "chat_template": bool(getattr(tokenizer, "chat_template", None)) and not raw,
                     "choices": dict(choices) if choices else None},
        "timings": {"seconds": seconds, "examples_per_s": len(records) / seconds if seconds else float("inf"),
                    "ce_seconds": ce_seconds},
        "truncated": truncated,
    }
