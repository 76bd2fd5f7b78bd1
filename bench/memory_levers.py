"""Memory levers of a chat LoRA run measured side by side: peak RSS and speed of each, on this CPU.

    .venv/bin/python bench/memory_levers.py [--model smollm2-135m-instruct] [--examples 48] [--repeats 1]
        [--threads 2] [--out bench/results]

`configs/lora-chitchat.yaml` as shipped (LoRA r=16 on every linear layer, conversations up to 384
tokens, every assistant turn trained, batch 8), one epoch of the same `--examples` conversations,
with one setting changed per row; each run is a fresh process (its own peak RSS) and the rows take
turns, so a busy moment slows them alike:

- batch 8: the shipped config;
- batch 4 x 2: `batch_size=4 grad_accum=2`, the same 8 examples per optimiser step;
- batch 2 x 4: `batch_size=2 grad_accum=4`;
- checkpointing: `gradient_checkpointing=true` (activations recomputed in the backward pass).

Reported: peak RSS of the process, real (non-padding) tokens per second of the training steps, and
the validation loss on the same 8 held-out conversations (the same optimiser steps, so it should
barely move). Writes bench/results/memory_levers_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from packing import run  # one `instructune train` in a fresh process, with its peak RSS

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "lora-chitchat.yaml"
LEVERS = {"batch 8": {}, "batch 4 x 2": {"batch_size": 4, "grad_accum": 2},
          "batch 2 x 4": {"batch_size": 2, "grad_accum": 4}, "checkpointing": {"gradient_checkpointing": True}}


def config(model: str, examples: int, threads: int, lever: dict, run_dir: Path) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.update({"model": model, "output_dir": str(run_dir), "threads": threads, "seed": 0, "max_steps": None,
                "epochs": 1, "eval_every": 0, "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood"})
    cfg["data"] = {**cfg["data"], "train_limit": examples, "val_limit": 8, "test_limit": 0}
    return {**cfg, **lever}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()

    from instructune import hardware

    host = hardware.machine_summary(hardware.shapes_of(args.model))
    results: dict[str, list[dict]] = {name: [] for name in LEVERS}
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeats):
            for name, runs in results.items():
                tag = f"{name.replace(' ', '_')}-{rep}"
                runs.append(run(config(args.model, args.examples, args.threads, LEVERS[name], work / tag), work, tag))
                print(f"repeat {rep + 1}/{args.repeats} {name}: peak {runs[-1]['peak_rss_mb']:.0f} MB, "
                      f"{runs[-1]['tokens_per_s']:.0f} real tokens/s", file=sys.stderr)
    rows = [{"lever": name, "settings": LEVERS[name], "steps": runs[0]["steps"], "precision": runs[0]["precision"],
             **{k: statistics.median(r[k] for r in runs) for k in ("peak_rss_mb", "tokens_per_s", "val_loss")}}
            for name, runs in results.items()]
    write(Path(args.out), {"model": args.model, "machine": host, "examples": args.examples,
                           "repeats": args.repeats, "rows": rows})


def write(out: Path, result: dict) -> None:
    from instructune.hardware import describe_machine
    from instructune.results import write_results

    base = result["rows"][0]
    lines = [f"Memory levers of configs/lora-chitchat.yaml ({result['model']}, LoRA r=16 on every linear layer, "
             f"max_length 384), one epoch of {result['examples']} conversations, median of {result['repeats']}; "
             f"{describe_machine(result['machine'])}.", "",
             "| lever | steps | peak RSS MB | vs batch 8 | real tokens/s | vs batch 8 | val loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['lever']} | {r['steps']} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['val_loss']:.4f} |")
    write_results(out, "memory_levers", result, "\n".join(lines))


if __name__ == "__main__":
    main()
