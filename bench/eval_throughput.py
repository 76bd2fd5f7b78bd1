"""Evaluation throughput: batched vs one-at-a-time generation, fp32 vs bf16 autocast, likelihood scoring.

    .venv/bin/python bench/eval_throughput.py [--model smollm2-135m-instruct] [--n 64]

Two workloads from the rotten-tomatoes test split (synthetic reviews when the data pack cannot
be built): sentiment classification (one-word answers: prefill-bound) and review writing
(32-token answers: decode-bound). Every setting of a workload runs on the same examples, and
batched greedy outputs are checked against one-at-a-time outputs in fp32.
Writes bench/results/eval_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instructune.data.prompt import prompt_text
from instructune.evaluation.evaluate import select
from instructune.evaluation.generate import generate_batch
from instructune.evaluation.scoring import classify_by_likelihood
from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.metrics import accuracy, map_to_label
from instructune.models import load_model
from instructune.results import write_results

CHOICES = {"fresh": "positive", "rotten": "negative"}
ADJ = {"fresh": ["wonderful", "moving", "sharp", "funny", "gripping", "beautifully acted"],
       "rotten": ["dull", "lifeless", "clumsy", "tedious", "confused", "badly written"]}


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """Review-like sentiment prompts of varied length, for when no data pack can be built."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = rng.choice(list(ADJ))
        words = ", ".join(rng.sample(ADJ[label], rng.randint(1, 4)))
        review = f"A {words} film{' about ' + rng.choice(['a family', 'a war', 'two friends']) if i % 2 else ''}."
        records.append({"id": f"syn-{i:03d}", "label": label, "completion": CHOICES[label],
                        "prompt": f"Is this movie review positive or negative?\n\nReview: {review}\n\n"
                                  "Answer with one word: positive or negative."})
    return records


def load_records(template: str, n: int) -> tuple[list[dict], str]:
    """`n` test records of a rotten-tomatoes template, or synthetic ones when the pack cannot be built."""
    try:
        from instructune.data.build import prepare, read_split

        records = read_split(prepare("rotten-tomatoes", [template], seed=0), "test")
        return select(records, n, seed=0), f"rotten-tomatoes {template}, test split"
    except Exception as e:  # the data pack is optional here: fall back to synthetic prompts
        print(f"data pack unavailable ({type(e).__name__}: {e}); using synthetic reviews", file=sys.stderr)
        records = synthetic_records(n)
        if template == "write-review":
            records = [dict(r, prompt=f"Write a one-sentence {r['completion']} review of the movie Film {i}, as a "
                                      "film critic.") for i, r in enumerate(records)]
        return records, f"synthetic {template}"


@dataclass
class Workload:
    name: str
    texts: list[str]
    gold: list[str] | None
    """Labels (classification) or None."""
    stop_at_newline: bool
    max_new_tokens: int
    settings: list[tuple[str, str, int]]
    """(kind, dtype, batch size); the first is the baseline (one-at-a-time fp32 generation)."""
    source: str


def run_setting(model: Any, tok: Any, w: Workload, texts: list[str], kind: str, dtype: str,
                bs: int) -> tuple[list[str], float, int]:
    """(generated answers or likelihood labels, seconds, new tokens) of one setting on `texts`."""
    if kind == "generate":
        gen = generate_batch(model, tok, texts, max_new_tokens=w.max_new_tokens, batch_size=bs,
                             stop_at_newline=w.stop_at_newline, dtype=dtype)
        return gen.texts, gen.seconds, gen.new_tokens
    start = time.perf_counter()
    labels = classify_by_likelihood(model, tok, texts, CHOICES, batch_size=bs, dtype=dtype)
    return labels, time.perf_counter() - start, 0


def measure(model: Any, tok: Any, w: Workload, chunk: int) -> tuple[list[dict], int]:
    """Rows of the table for one workload, and the batched-vs-single fp32 mismatches.

    Settings take turns on each chunk of examples, so a busy machine slows them alike.
    """
    out: dict[tuple, list[str]] = {s: [] for s in w.settings}
    seconds, tokens = dict.fromkeys(w.settings, 0.0), dict.fromkeys(w.settings, 0)
    for start in range(0, len(w.texts), chunk):
        for s in w.settings:
            texts, secs, new = run_setting(model, tok, w, w.texts[start:start + chunk], *s)
            out[s] += texts
            seconds[s] += secs
            tokens[s] += new
        print(f"{w.name}: {min(start + chunk, len(w.texts))}/{len(w.texts)} examples", file=sys.stderr)
    base = len(w.texts) / seconds[w.settings[0]]
    rows = []
    for s in w.settings:
        kind, dtype, bs = s
        row = {"workload": w.name, "setting": f"{kind} {dtype}", "batch_size": bs, "seconds": seconds[s],
               "examples_per_s": len(w.texts) / seconds[s], "speedup": len(w.texts) / seconds[s] / base,
               "new_tokens": tokens[s]}
        if w.gold is not None:
            labels = [map_to_label(t, CHOICES) for t in out[s]] if kind == "generate" else out[s]
            row.update(accuracy=accuracy(labels, w.gold), invalid=labels.count("invalid"))
        rows.append(row)
    batched = next(s for s in w.settings if s[:2] == ("generate", "float32") and s[2] > 1)
    mismatches = sum(a != b for a, b in zip(out[w.settings[0]], out[batched], strict=True))
    return rows, mismatches


def workloads(tok: Any, n: int, n_long: int, bs: int) -> list[Workload]:
    def prepared(template: str, count: int) -> tuple[list[str], list[dict], str]:
        records, source = load_records(template, count)
        texts = [prompt_text(tok, r["prompt"]) for r in records]
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)  # as generate_batch would batch them
        return [texts[i] for i in order], [records[i] for i in order], source

    texts, records, source = prepared("sentiment", n)
    sentiment = Workload("sentiment", texts, [str(r["label"]) for r in records], True, 16,
                         [(k, d, b) for k, d in [("generate", "float32"), ("generate", "bfloat16"),
                                                 ("likelihood", "float32")] for b in (1, bs)], source)
    texts, _, source = prepared("write-review", n_long)
    review = Workload("write-review", texts, None, False, 32,
                      [("generate", "float32", 1), ("generate", "float32", bs), ("generate", "bfloat16", bs)], source)
    return [sentiment, review]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=64, help="sentiment examples (short answers)")
    p.add_argument("--n-long", type=int, default=32, help="review-writing examples (32-token answers)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    model, tok = load_model(args.model)
    generate_batch(model, tok, ["Hello"], max_new_tokens=2)  # warm-up: first-call overheads
    rows, checks = [], {}
    for w in workloads(tok, args.n, args.n_long, args.batch_size):
        w_rows, mismatches = measure(model, tok, w, args.batch_size)
        rows += w_rows
        checks[w.name] = {"examples": len(w.texts), "source": w.source, "max_new_tokens": w.max_new_tokens,
                          "stop": "newline" if w.stop_at_newline else "eos", "mismatches_fp32": mismatches}
    result = {"model": args.model, "machine": machine_summary(shapes_of(args.model)),
              "load_average": {"before": load_before, "after": os.getloadavg()[0]},
              "batched_equals_one_at_a_time_fp32": all(c["mismatches_fp32"] == 0 for c in checks.values()),
              "workloads": checks, "rows": rows}
    write(Path(args.out), result)
    if not result["batched_equals_one_at_a_time_fp32"]:
        sys.exit("batched fp32 greedy outputs differ from one-at-a-time outputs (see mismatches_fp32)")


def write(out: Path, result: dict) -> None:
    lines = [f"Evaluation throughput, {result['model']}, greedy decoding; {describe_machine(result['machine'])}; "
             "load average "
             f"{result['load_average']['before']:.1f} before, {result['load_average']['after']:.1f} after.", ""]
    for name, c in result["workloads"].items():
        lines.append(f"- {name}: {c['examples']} examples ({c['source']}), stop at {c['stop']}, max "
                     f"{c['max_new_tokens']} new tokens; batched fp32 == one-at-a-time fp32: "
                     f"{'yes' if c['mismatches_fp32'] == 0 else 'NO'} ({c['mismatches_fp32']} mismatches)")
    lines += ["", "| workload | setting | batch | examples/s | speed-up | new tokens | accuracy |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        acc = f"{r['accuracy']:.3f} ({r['invalid']} invalid)" if "accuracy" in r else "-"
        lines.append(f"| {r['workload']} | {r['setting']} | {r['batch_size']} | {r['examples_per_s']:.2f} | "
                     f"{r['speedup']:.1f}x | {r['new_tokens']} | {acc} |")
    lines += ["", "Speed-up is against one-at-a-time fp32 generation of the same workload."]
    write_results(out, "eval_throughput", result, "\n".join(lines))


if __name__ == "__main__":
    main()
