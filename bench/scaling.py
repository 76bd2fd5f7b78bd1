"""Scaling: time and peak memory of the data pipeline and of a training epoch as examples and length grow.

    .venv/bin/python bench/scaling.py [--model smollm2-135m-instruct] [--sizes 1000,4000,12000]
        [--lengths 64,128,256] [--threads 2]

(a) data: build the rotten-tomatoes `sentiment` dataset from N rows (render, split, write:
    `build_table`), then encode its records for training (`encode_records`: chat template, tokens,
    labels) with --model's tokenizer (only its tokenizer is loaded);
(b) training: one epoch of instructune's loop (`train`: full fine-tuning, fp32, batch 8) of the
    tiny 2-layer, 64-dim llama (`instructune.testing.save_tiny`), on N examples at max_length 128 and
    on 4000 examples at each max_length.
Each measurement is a fresh process (`--child`), so its peak RSS is its own. Read the time per
example (and per token) columns: a flat column is linear growth. The pack has 12.8k rows, so the
examples of (b) come from all three splits. About 3 minutes on 2 cores.
Writes bench/results/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.results import write_results

PACK, TEMPLATE, SEED, ENCODE_LENGTH, EPOCH_SIZE = "rotten-tomatoes", "sentiment", 0, 256, 4000


def _rss_mb() -> float:
    """Resident memory now (VmRSS)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_data(model: str, rows: int, work: Path) -> dict[str, Any]:
    """Seconds and memory of building a dataset of `rows` rows, then encoding its records."""
    from instructune.data.build import SPLITS, build_table, load_tokenizer, read_split, select_templates
    from instructune.data.sources import read_table
    from instructune.data.tokenize import encode_records

    table, templates, tok = read_table(PACK), select_templates(PACK, [TEMPLATE]), load_tokenizer(model)
    before = _rss_mb()
    start = time.perf_counter()
    build_table(table, templates, work / "built", seed=SEED, limit=rows)
    built = time.perf_counter()
    records = [r for s in SPLITS for r in read_split(work / "built", s)]
    read = time.perf_counter()
    encoded, dropped = encode_records(records, tok, ENCODE_LENGTH)
    done = time.perf_counter()
    return {"rows": rows, "records": len(records), "build_s": built - start, "encode_s": done - read,
            "tokens": sum(len(e["input_ids"]) for e in encoded), "dropped": dropped, "peak_rss_mb": _peak_mb(),
            "growth_mb": _peak_mb() - before}


def measure_epoch(tiny: Path, pool: Path, examples: int, max_length: int, work: Path) -> dict[str, Any]:
    """One epoch of `train` on the first `examples` records of the pool, at `max_length`."""
    from instructune.config import load_config
    from instructune.data.build import SPLITS, read_split
    from instructune.training.checkpoint import latest_checkpoint
    from instructune.training.config import TrainConfig
    from instructune.training.trainer import train

    records = [r for s in SPLITS for r in read_split(pool, s)]
    data = work / "data"
    data.mkdir()
    for split, part in (("train", records[:examples]), ("validation", records[-8:]), ("test", [])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    shutil.copy(pool / "templates.json", data / "templates.json")
    cfg = load_config(TrainConfig, data={
        "model": str(tiny), "output_dir": str(work / "run"), "method": {"name": "full"}, "precision": "fp32",
        "data": {"source": str(data), "templates": [TEMPLATE], "max_length": max_length, "val_limit": 8,
                 "test_limit": None}, "batch_size": 8, "epochs": 1, "eval_every": 0, "save_every": 0,
        "eval_mode": "likelihood", "log_every": 100})
    result = train(cfg, log=lambda *_: None)
    state = json.loads((latest_checkpoint(work / "run") / "trainer_state.json").read_text())
    m = result.metrics
    return {"examples": examples, "max_length": max_length, "trained": m["train_examples"],
            "dropped": m["dropped_examples"], "steps": state["step"], "epoch_s": state["train_seconds"],
            "tokens": state["tokens"], "padding": m["padding_fraction"], "peak_rss_mb": _peak_mb()}


def child(spec_path: Path) -> None:
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    if spec["kind"] == "data":
        out = measure_data(spec["model"], spec["rows"], work)
    else:
        out = measure_epoch(Path(spec["tiny"]), Path(spec["pool"]), spec["examples"], spec["max_length"], work)
    Path(spec["result"]).write_text(json.dumps(out))


def run_child(spec: dict, work: Path, tag: str, threads: int) -> dict[str, Any]:
    """One measurement in a fresh process; its result (the process fails loudly, with its log)."""
    spec = {**spec, "threads": threads, "work": str(work / tag), "result": str(work / f"{tag}.json")}
    (work / tag).mkdir()
    (work / f"{tag}.spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    with open(work / f"{tag}.log", "w") as log:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(work / f"{tag}.spec.json")],
                            stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    shutil.rmtree(work / tag, ignore_errors=True)
    if rc != 0:
        sys.exit(f"{tag} failed (exit status {rc}):\n{(work / f'{tag}.log').read_text()[-3000:]}")
    out = json.loads((work / f"{tag}.json").read_text())
    print(f"{tag}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()})}",
          file=sys.stderr)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer encodes the data in (a)")
    p.add_argument("--sizes", default="1000,4000,12000")
    p.add_argument("--lengths", default="64,128,256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(Path(args.child))

    from instructune.data.build import prepare
    from instructune.testing import save_tiny

    sizes, lengths = [int(x) for x in args.sizes.split(",")], [int(x) for x in args.lengths.split(",")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        tiny, pool = save_tiny(work / "tiny"), prepare(PACK, [TEMPLATE], seed=SEED)
        data = [run_child({"kind": "data", "model": args.model, "rows": n}, work, f"data-{n}", args.threads)
                for n in sizes]
        grid = list(dict.fromkeys([(n, 128) for n in sizes] + [(EPOCH_SIZE, length) for length in lengths]))
        epochs = [run_child({"kind": "epoch", "tiny": str(tiny), "pool": str(pool), "examples": n,
                             "max_length": length}, work, f"epoch-{n}-{length}", args.threads) for n, length in grid]
    result = {"tokenizer": args.model, "training_model": "tiny llama (2 layers, 64 dims, vocab 512)",
              "machine": _machine(args.model, args.threads),
              "load_average": {"before": load_before, "after": os.getloadavg()[0]}, "data": data, "epochs": epochs}
    write(Path(args.out), result)


def _machine(model: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)  # the probe runs at the children's thread count
    return machine_summary(shapes_of(model))


def write(out: Path, result: dict) -> None:
    lines = [f"Scaling; {describe_machine(result['machine'])}; load average {result['load_average']['before']:.1f} before, "
             f"{result['load_average']['after']:.1f} after.", "",
             f"(a) Building the rotten-tomatoes sentiment dataset from N rows (render, split, write), then encoding "
             f"its records with the {result['tokenizer']} tokenizer (max_length {ENCODE_LENGTH}):", "",
             "| rows | build s | build ms/row | encode s | encode ms/example | tokens/example | peak RSS MB | "
             "growth MB |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in result["data"]:
        lines.append(f"| {d['rows']} | {d['build_s']:.2f} | {1000 * d['build_s'] / d['rows']:.3f} | "
                     f"{d['encode_s']:.2f} | {1000 * d['encode_s'] / d['records']:.3f} | "
                     f"{d['tokens'] / d['records']:.1f} | {d['peak_rss_mb']:.0f} | {d['growth_mb']:.0f} |")
    lines += ["", f"(b) One training epoch of the {result['training_model']}: full fine-tuning, fp32, batch 8, "
              "length-grouped batches:", "",
              "| examples | max_length | steps | epoch s | ms/example | µs/real token | tokens/example | padding | "
              "peak RSS MB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in result["epochs"]:
        lines.append(f"| {e['trained']} | {e['max_length']} | {e['steps']} | {e['epoch_s']:.1f} | "
                     f"{1000 * e['epoch_s'] / e['trained']:.2f} | {1e6 * e['epoch_s'] / e['tokens']:.1f} | "
                     f"{e['tokens'] / e['trained']:.1f} | {e['padding']:.1%} | {e['peak_rss_mb']:.0f} |")
    lines += ["", "Growth MB: peak RSS minus RSS before building (the pack table and tokenizer already loaded). "
              "Epoch seconds are the loop's own training-step time (validation and checkpoint left out); longer "
              "prompts are cut in their middle to fit max_length, so shorter limits see fewer tokens per example."]
    write_results(out, "scaling", result, "\n".join(lines))


if __name__ == "__main__":
    main()
