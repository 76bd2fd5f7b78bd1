"""What watching forgetting costs: one retention measurement against one training step, side by side.

    .venv/bin/python bench/retention_overhead.py [--repeats 3]

On SmolLM2-135M-Instruct, in one process: a full fine-tuning step (AdamW, 8 movie-review prompts
with their answers, the demo's batch) and the retention measurements a run makes every
`retention_every` steps, for the demo's suite (8 news articles, headline by reference
cross-entropy) and a larger one (16 articles, 16 BBC articles by likelihood, 8 general prompts,
8 held-out texts). Each figure is the median of `--repeats`; the overhead is stated as training
steps per measurement. Writes bench/results/retention_overhead_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from instructune.data.build import prepare, read_split
from instructune.data.prompt import prompt_text
from instructune.data.task import SplitSpec
from instructune.forgetting.kinds import general_probe, text_perplexity
from instructune.forgetting.monitor import Monitor
from instructune.forgetting.suite import RetentionSuite, RetentionTask, suite_spec
from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.models import DEFAULT_MODEL, load_model, pull_model
from instructune.results import write_results

OUT = Path(__file__).parent / "results"
SUITES = {
    "demo (8 headlines, reference CE)": dict(tasks=[("news-headlines", "headline", "generate", 8)], probe=0, texts=0),
    "larger (16 headlines, 16 BBC topics, 8 probe prompts, 8 texts)": dict(
        tasks=[("news-headlines", "headline", "generate", 16), ("bbc-news", "topic", "likelihood", 16)], probe=8, texts=8),
}


def median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model: Any, tok: Any, records: list[dict]) -> Any:
    """One AdamW step on `records` (prompt in the chat template, answer appended), every token trained."""
    texts = [prompt_text(tok, r["prompt"]) + r["completion"] for r in records]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        model.train()
        model(**batch, labels=labels).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    machine = machine_summary(shapes_of(DEFAULT_MODEL))
    pull_model(DEFAULT_MODEL)
    model, tok = load_model(DEFAULT_MODEL)
    records = read_split(prepare("rotten-tomatoes", ["sentiment"], seed=0), "train")[:8]
    step = training_step(model, tok, records)
    step()  # warm-up: optimizer state, kernels
    step_s = median_seconds(step, args.repeats)
    rows = []
    for name, s in SUITES.items():
        tasks = [RetentionTask(source=src, template=tpl, mode=mode, limit=n) for src, tpl, mode, n in s["tasks"]]
        spec = suite_spec(tasks, general_probe.Options(s["probe"], 32),
                          text_perplexity.Options("news-headlines" if s["texts"] else None, s["texts"]), {})
        suite = RetentionSuite.build(spec, SplitSpec(), 0, held_out="validation")  # the monitor watches validation rows
        model.eval()
        start = time.perf_counter()
        monitor = Monitor.start(suite, model, tok)
        start_s = time.perf_counter() - start
        measure_s = median_seconds(lambda m=monitor: m.drops(model), args.repeats)
        rows.append({"suite": name, "start_s": start_s, "measure_s": measure_s, "steps_per_measure": measure_s / step_s})
    result = {"machine": machine, "train_step_s": step_s, "repeats": args.repeats, "suites": rows}
    lines = [f"# Retention overhead ({describe_machine(machine)})", "",
             f"One full fine-tuning step of 8 reviews: {step_s:.2f} s (median of {args.repeats}).", "",
             "| suite | first scoring (before training) s | one measurement s | = training steps |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['suite']} | {r['start_s']:.2f} | {r['measure_s']:.2f} | {r['steps_per_measure']:.2f} |" for r in rows]
    write_results(OUT, "retention_overhead", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
