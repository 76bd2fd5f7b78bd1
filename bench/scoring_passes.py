"""What reading each prompt once saves: evaluation and retention scoring, one pass against two, side by side.

    .venv/bin/python bench/scoring_passes.py [--repeats 3]

On SmolLM2-135M-Instruct, in one process, the demo's scoring work two ways, alternating:
- sentiment by likelihood, 0- and 3-shot on 64 test reviews (`instructune eval --mode likelihood`):
  the references' perplexity taken from the choice scores (one pass over the prompts) against a
  second pass that scores the references again;
- 16 news articles, headlines generated and scored by ROUGE-L (a retention measure of
  `instructune forgetting`): without the references' perplexity, which no retention score uses,
  against with it.
Each figure is the median of `--repeats`; the one-pass perplexity is checked equal to the
two-pass one. Writes bench/results/scoring_passes_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any
from unittest import mock

from instructune.data.build import prepare, read_split
from instructune.data.templates import get_template
from instructune.evaluation import evaluate
from instructune.evaluation.evaluate import evaluate_records, select
from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.models import DEFAULT_MODEL, load_model, pull_model
from instructune.results import write_results

OUT = Path(__file__).parent / "results"


def records(source: str, template: str, split: str, n: int | None) -> list[dict]:
    return select(read_split(prepare(source, [template], seed=0), split), n, seed=0)


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    pull_model(DEFAULT_MODEL, log=lambda *_: None)
    model, tok = load_model(DEFAULT_MODEL)
    sentiment, headline = get_template("rotten-tomatoes", "sentiment"), get_template("news-headlines", "headline")
    reviews, train = records("rotten-tomatoes", "sentiment", "test", 64), records("rotten-tomatoes", "sentiment",
                                                                                   "train", None)
    articles = records("news-headlines", "headline", "test", 16)

    def review_eval(shots: int) -> dict:
        return evaluate_records(model, tok, reviews, task="classification", choices=sentiment.choices,
                                metrics=sentiment.metrics, mode="likelihood", shots=shots, train_records=train)

    def headlines(perplexity: bool) -> dict:
        return evaluate_records(model, tok, articles, task=headline.task, choices=None, metrics=headline.metrics,
                                stop=headline.stop, max_new_tokens=32, perplexity=perplexity)

    def second_pass(fn: Any) -> Any:  # the references scored again, as before
        with mock.patch.object(evaluate, "_gold_ce", lambda *a: None):
            return fn()

    work = {f"sentiment {k}-shot, 64 reviews, likelihood": (lambda k=k: review_eval(k),
                                                            lambda k=k: second_pass(lambda: review_eval(k)))
            for k in (0, 3)}
    work["headlines, 16 articles, generated"] = (lambda: headlines(False), lambda: headlines(True))
    headlines(False)  # warm-up: first-call overheads
    rows = []
    for name, (one, two) in work.items():
        times: dict[str, list[float]] = {"one": [], "two": []}
        for _ in range(args.repeats):  # alternating, so a busy machine slows both alike
            t1, r1 = timed(one)
            t2, r2 = timed(two)
            times["one"].append(t1)
            times["two"].append(t2)
        one_s, two_s = statistics.median(times["one"]), statistics.median(times["two"])
        ce1, ce2 = r1["metrics"]["cross_entropy"], r2["metrics"]["cross_entropy"]
        rows.append({"work": name, "one_pass_s": one_s, "two_passes_s": two_s, "saved": 1 - one_s / two_s,
                     "cross_entropy_one_pass": ce1, "cross_entropy_two_passes": ce2,
                     "same_scores": r1["predictions"] == r2["predictions"]})
        print(f"{name}: {one_s:.2f} s against {two_s:.2f} s", flush=True)
    write(Path(args.out), {"model": DEFAULT_MODEL, "machine": machine_summary(shapes_of(DEFAULT_MODEL)),
                           "repeats": args.repeats, "rows": rows})


def write(out: Path, result: dict) -> None:
    lines = [f"Scoring passes, {result['model']}; {describe_machine(result['machine'])}; median of "
             f"{result['repeats']}.", "",
             "| work | one pass s | two passes s | saved | reference CE, one pass | two passes | same predictions |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        ce1, ce2 = r["cross_entropy_one_pass"], r["cross_entropy_two_passes"]
        lines.append(f"| {r['work']} | {r['one_pass_s']:.2f} | {r['two_passes_s']:.2f} | {r['saved']:.0%} | "
                     f"{'not computed' if ce1 is None else f'{ce1:.6f}'} | {ce2:.6f} | "
                     f"{'yes' if r['same_scores'] else 'NO'} |")
    lines += ["", "One pass: sentiment takes the references' perplexity from the choice scores; headlines skip it "
              "(`perplexity=False`, as the forgetting suite scores them). Two passes: the references scored again."]
    write_results(out, "scoring_passes", result, "\n".join(lines))


if __name__ == "__main__":
    main()
