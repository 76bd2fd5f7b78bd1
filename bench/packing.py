"""Packing against length-grouped padding: the same examples trained one epoch, side by side.

    .venv/bin/python bench/packing.py [--model smollm2-135m-instruct] [--examples 160] [--repeats 3]
        [--threads 2] [--out bench/results]

Two datasets: rotten-tomatoes `sentiment` (short templated prompts, a one-word answer) and the
`chitchat` conversations (multi-turn, every assistant turn trained). For each, `instructune train`
runs LoRA r=16 on every linear layer (lr 5e-4, linear schedule, 2 warmup steps, seed 0) over the
same `--examples` training examples for one epoch at data.max_length 256, either padded (batches of
8 examples, grouped by length: the default) or packed (`packing: true`: rows of up to 256 tokens,
8 rows per batch, so fewer, fuller steps). Each run is a fresh process (its own peak RSS); repeats
take turns, so a busy moment slows both alike. Reported: real (non-padding) tokens per second of
the training steps, steps, the padding share of token slots, peak RSS and the validation loss of the
trained adapter on the same 32 validation examples, in the precision `auto` picks on this CPU.
Writes bench/results/packing_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DATASETS = {"sentiment": {"source": "rotten-tomatoes", "templates": ["sentiment"]},
            "chitchat": {"source": "chitchat", "templates": []}}
LORA = {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
MAX_LENGTH, BATCH, VAL = 256, 8, 32


def config(model: str, data: str, packing: bool, examples: int, threads: int, run_dir: Path) -> dict:
    return {"model": model, "output_dir": str(run_dir), "method": LORA, "batch_size": BATCH, "epochs": 1,
            "packing": packing, "threads": threads, "seed": 0,
            "data": {**DATASETS[data], "max_length": MAX_LENGTH, "train_limit": examples, "val_limit": VAL,
                     "test_limit": 0},
            "optim": {"lr": 5e-4, "warmup_steps": 2, "schedule": "linear"},
            "eval_every": 0, "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood"}


def run(cfg: dict, work: Path, tag: str) -> dict:
    """One `instructune train` in a fresh process; its metrics and peak RSS."""
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = ("import resource, sys; from instructune.cli import main; rc = main(['train', sys.argv[1]]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK")) / 1024
    m = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
    return {"tokens_per_s": m["train_tokens"] / m["train_seconds"], "train_seconds": m["train_seconds"],
            "steps": m["steps"], "padding": m["padding_fraction"], "examples": m["train_examples"],
            "rows": m.get("packed_rows"), "val_loss": m["validation"]["loss"], "peak_rss_mb": peak,
            "attention": m["attention"], "precision": m["precision"]["precision"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--examples", type=int, default=160)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()

    from instructune import hardware

    host = hardware.machine_summary(hardware.shapes_of(args.model))
    results: dict[tuple[str, bool], list[dict]] = {(d, pk): [] for d in DATASETS for pk in (False, True)}
    with tempfile.TemporaryDirectory(prefix="packing-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeats):
            for (data, packed), runs in results.items():
                tag = f"{data}-{'packed' if packed else 'padded'}-{rep}"
                runs.append(run(config(args.model, data, packed, args.examples, args.threads, work / tag), work, tag))
                print(f"repeat {rep + 1}/{args.repeats} {tag}: {runs[-1]['tokens_per_s']:.0f} real tokens/s",
                      file=sys.stderr)
    rows = []
    for (data, packed), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("tokens_per_s", "padding", "val_loss",
                                                                  "peak_rss_mb", "train_seconds")}
        rows.append({"data": data, "packed": packed, **med, "steps": runs[0]["steps"], "rows": runs[0]["rows"],
                     "examples": runs[0]["examples"], "attention": runs[0]["attention"],
                     "precision": runs[0]["precision"], "per_repeat": [r["tokens_per_s"] for r in runs]})
    write(Path(args.out), {"model": args.model, "machine": host, "examples": args.examples, "repeats": args.repeats,
                           "max_length": MAX_LENGTH, "batch_size": BATCH, "rows": rows})


def write(out: Path, result: dict) -> None:
    from instructune.hardware import describe_machine
    from instructune.results import write_results

    lines = [f"Packing against length-grouped padding, {result['model']} LoRA r=16, {result['examples']} training "
             f"examples for one epoch at max_length {result['max_length']}, batch {result['batch_size']} (examples or "
             f"packed rows), median of {result['repeats']}; {describe_machine(result['machine'])}.", "",
             "| data | batches | steps | padding | real tokens/s | vs padded | peak RSS MB | val loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        base = next(b for b in result["rows"] if b["data"] == r["data"] and not b["packed"])
        what = f"packed ({r['examples']} examples in {r['rows']} rows)" if r["packed"] else "padded, length-grouped"
        lines.append(f"| {r['data']} | {what} | {r['steps']} | {r['padding']:.1%} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['peak_rss_mb']:.0f} | {r['val_loss']:.4f} |")
    lines += ["", "Real tokens are non-padding tokens; seconds are those of the training steps only; the validation "
              "loss is the run's own, on the same 32 examples for both."]
    write_results(out, "packing", result, "\n".join(lines))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
