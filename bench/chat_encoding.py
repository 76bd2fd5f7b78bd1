"""Chat encoding against conversation length: linear in the turns, and cut before it grows.

    .venv/bin/python bench/chat_encoding.py          # about 10 s; no model download

One conversation of N user/assistant turns (N = 10, 1,000 and 10,000) is encoded as training and
`data inspect` encode it (`chat.encode_conversation`, the tiny test tokenizer and its ChatML
template): whole (max_length above its length) and cut at max_length 128, as
`data inspect --max-length 128` does. Each figure is the median of 3 runs; the template renders
and the messages they were given are counted. Round three's issue measured the old encoding,
which rendered every prefix twice per answer: 0.24 / 1.09 / 3.44 s for 200 / 400 / 800 turns, and
no result after 300 s for 10,000 turns cut at 128 tokens.
Writes bench/results/chat_encoding_<cpu class>.json and .md.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from instructune.data import chat
from instructune.hardware import machine_summary
from instructune.results import write_results
from instructune.testing import tiny_tokenizer

TURNS = (10, 1_000, 10_000)
MAX_LENGTHS = (10**7, 128)
REPEATS = 3
OUT = Path(__file__).parent / "results"


def conversation(turns: int) -> list[dict[str, str]]:
    return [m for k in range(turns) for m in ({"role": "user", "content": f"What is {k} plus {k}?"},
                                               {"role": "assistant", "content": f"{k} plus {k} is {2 * k}."})]


def measure(tok: Any, turns: int, max_length: int) -> dict[str, Any]:
    """Median seconds of encoding one conversation, and what one encoding rendered and produced."""
    messages, counts = conversation(turns), {"renders": 0, "messages": 0}
    render = tok.apply_chat_template

    def counted(conv: list[dict], *args: Any, **kwargs: Any) -> Any:
        counts["renders"] += 1
        counts["messages"] += len(conv)
        return render(conv, *args, **kwargs)

    times = []
    for _ in range(REPEATS):
        counts.update(renders=0, messages=0)
        tok.apply_chat_template = counted
        start = time.perf_counter()
        examples, dropped = chat.encode_conversation(tok, messages, max_length)
        times.append(time.perf_counter() - start)
        tok.apply_chat_template = render
    seconds = statistics.median(times)
    return {"turns": turns, "max_length": max_length, "seconds": seconds, "us_per_turn": 1e6 * seconds / turns,
            **counts, "tokens": sum(len(e["input_ids"]) for e in examples),
            "trained": sum(sum(x != chat.IGNORE_INDEX for x in e["labels"]) for e in examples), "dropped": dropped}


def main() -> int:
    tok = tiny_tokenizer()
    chat.encode_conversation(tok, conversation(1), 10**7)  # the template's probe, once per template
    rows = [measure(tok, turns, max_length) for max_length in MAX_LENGTHS for turns in TURNS]
    lines = ["| turns | max_length | seconds | µs per turn | renders | messages rendered | tokens | trained |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cap = "none" if r["max_length"] == MAX_LENGTHS[0] else r["max_length"]
        lines.append(f"| {r['turns']:,} | {cap} | {r['seconds']:.4f} | {r['us_per_turn']:.1f} | {r['renders']} | "
                     f"{r['messages']:,} | {r['tokens']:,} | {r['trained']:,} |")
    whole = {r["turns"]: r for r in rows if r["max_length"] == MAX_LENGTHS[0]}
    growth = whole[TURNS[-1]]["seconds"] / whole[TURNS[-2]]["seconds"]
    markdown = "\n".join([
        "# Chat encoding against conversation length", "",
        f"One conversation encoded whole and cut at 128 tokens (median of {REPEATS}; tiny ChatML tokenizer). "
        f"Whole: 10x the turns took {growth:.1f}x the time (linear is 10x; quadratic would be 100x). Cut: the "
        "work stays that of the first turns, however long the conversation.", "", *lines, ""])
    result = {"machine": machine_summary(), "rows": rows, "whole_growth_1000_to_10000": growth}
    write_results(OUT, "chat_encoding", result, markdown, command="python bench/chat_encoding.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
