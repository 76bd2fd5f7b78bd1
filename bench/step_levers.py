"""Training-step levers measured side by side: what one step costs with each, on this CPU.

    .venv/bin/python bench/step_levers.py [--model smollm2-135m-instruct] [--method full] [--steps 8]
        [--threads 2] [--levers baseline,heap,compile,all-logits] [--precision auto]

One training step (forward, backward, fused AdamW) of batch 8, as the engine runs it
(`instructune.training.batching.completion_loss_sum`), on rotten-tomatoes sentiment examples (the
chat-template prompt and its one-word answer; real lengths, padded per batch), full fine-tuning or
LoRA r=16 on every linear layer, in the precision `auto` picks on this CPU unless told otherwise:

- baseline: the engine's defaults, the output layer computed only at completion positions;
- heap: `instructune.hardware.reuse_freed_memory()`: freed memory stays in the process for the next
  tensors instead of going back to the OS and being faulted in again page by page (the engine's
  default where a trainable tensor is larger than 32 MiB, so the baseline row leaves it off);
- compile: the model's forward compiled by TorchInductor (dynamic shapes);
- all-logits: the output layer at every position (what a plain `model(**batch).loss` does);
- precision: the other precision (fp32 <-> bf16 autocast).

Every lever is its own process (the allocator and compile settings are process-wide) holding a
freshly loaded model, and the levers take turns step by step on the same batches, so a busy moment
slows them alike. The first two steps are warm-up (compilation happens there and is reported
apart); the median of the rest is the step time. Peak RSS is each process's own.
Writes bench/results/step_levers_<method>_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BATCH, MAX_LENGTH, WARMUP_STEPS = 8, 160, 2
LORA = {"r": 16, "alpha": 32, "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
LR = {"lora": 5e-4, "full": 5e-5}
LEVERS = {"baseline": {}, "heap": {"heap": True}, "compile": {"compile": True},
          "all-logits": {"all_logits": True}, "precision": {"flip_precision": True}}


def batches(model: str, steps: int) -> list[dict[str, Any]]:
    from instructune.data.build import load_tokenizer, prepare, read_split
    from instructune.data.tokenize import encode
    from instructune.training.batching import collate

    tok = load_tokenizer(model)
    rows = read_split(prepare("rotten-tomatoes", ["sentiment"], seed=0), "train")[:BATCH * steps]
    examples = [encode(tok, r["prompt"], r["completion"], MAX_LENGTH) for r in rows]
    return [collate(examples[i:i + BATCH], tok.pad_token_id) for i in range(0, len(examples), BATCH)]


# --- child: one lever's process, stepping when told


def child(spec: dict[str, Any]) -> None:
    import torch

    from instructune import hardware
    from instructune.methods import METHODS
    from instructune.models import load_model
    from instructune.training.attention import set_attention
    from instructune.training.batching import completion_loss_sum
    from instructune.training.setup import adamw

    lever = spec["lever"]
    torch.set_num_threads(spec["threads"])
    if lever.get("heap"):
        hardware.reuse_freed_memory()
    data = batches(spec["model"], spec["steps"])
    torch.manual_seed(0)
    model, _ = load_model(spec["model"])
    set_attention(model, "recompute")
    model = METHODS[spec["method"]](model, **(LORA if spec["method"] == "lora" else {}))
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=LR[spec["method"]])
    if lever.get("compile"):
        model.forward = torch.compile(model.forward, dynamic=True)
    bf16 = spec["precision"] == "bf16"
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "done":
            break
        batch = data[int(line)]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = completion_loss_sum(model, batch, not lever.get("all_logits"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(json.dumps({"seconds": time.perf_counter() - start, "loss": float(loss.detach())}), flush=True)
    status = Path("/proc/self/status").read_text()
    peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")) / 1024
    print(json.dumps({"peak_rss_mb": peak}), flush=True)


# --- parent: one process per lever, taking turns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--method", default="full", choices=["full", "lora"])
    p.add_argument("--steps", type=int, default=8, help="steps per lever, the first two of them warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levers", default="baseline,heap,compile,all-logits")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(Path(args.child).read_text()))

    import torch

    from instructune import hardware
    from instructune.results import write_results

    torch.set_num_threads(args.threads)
    host = hardware.machine_summary(hardware.shapes_of(args.model))
    precision = host["auto_precision"] if args.precision == "auto" else args.precision
    data = batches(args.model, args.steps)  # also builds the cached dataset before the children read it
    names = args.levers.split(",")
    procs, times, losses = {}, {n: [] for n in names}, {n: [] for n in names}
    work = Path(os.environ.get("TMPDIR", "/tmp"))
    for name in names:
        lever = LEVERS[name]
        spec = {"model": args.model, "method": args.method, "steps": args.steps, "threads": args.threads,
                "lever": lever, "precision": ({"fp32": "bf16", "bf16": "fp32"}[precision]
                                              if lever.get("flip_precision") else precision)}
        path = work / f"step-levers-{os.getpid()}-{name}.json"
        path.write_text(json.dumps(spec))
        procs[name] = subprocess.Popen([sys.executable, __file__, "--child", str(path)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True,
                                       env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        assert procs[name].stdout.readline().strip() == "ready", f"lever {name} failed to start"
    for i in range(len(data)):  # step i of every lever in turn: a busy moment slows them alike
        for name in names:
            procs[name].stdin.write(f"{i}\n")
            procs[name].stdin.flush()
            r = json.loads(procs[name].stdout.readline())
            times[name].append(r["seconds"])
            losses[name].append(r["loss"])
            print(f"step {i + 1}/{len(data)} {name}: {r['seconds']:.2f} s", file=sys.stderr, flush=True)
    peaks = {}
    for name in names:
        procs[name].stdin.write("done\n")
        procs[name].stdin.flush()
        peaks[name] = json.loads(procs[name].stdout.readline())["peak_rss_mb"]
        procs[name].wait()
    real = sum(int(b["attention_mask"].sum()) for b in data[WARMUP_STEPS:])
    levers = {n: {"step_s": statistics.median(times[n][WARMUP_STEPS:]), "warmup_s": sum(times[n][:WARMUP_STEPS]),
                  "tokens_per_s": real / sum(times[n][WARMUP_STEPS:]), "peak_rss_mb": peaks[n], "times": times[n],
                  "losses": losses[n]} for n in names}
    result = {"model": args.model, "method": args.method, "precision": precision, "threads": args.threads,
              "batch": BATCH, "steps": args.steps, "machine": host, "levers": levers}
    write_results(Path(args.out), f"step_levers_{args.method}", result, markdown(result))


def markdown(r: dict[str, Any]) -> str:
    from instructune.hardware import describe_machine

    base = r["levers"]["baseline"]
    what = "Full fine-tuning" if r["method"] == "full" else "LoRA (r=16, every linear layer)"
    lines = [f"{what} step of {r['model']}, batch {r['batch']}, {r['precision']}, fused AdamW; "
             f"{describe_machine(r['machine'])}; median of {r['steps'] - WARMUP_STEPS} steps after "
             f"{WARMUP_STEPS} warm-up steps, the same batches for every lever, one process per lever, taking "
             "turns step by step.", "",
             "| lever | step s | real tokens/s | vs baseline | peak RSS MB | warm-up s (2 steps) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in r["levers"].items():
        lines.append(f"| {name} | {m['step_s']:.2f} | {m['tokens_per_s']:.0f} | {base['step_s'] / m['step_s']:.2f}x "
                     f"| {m['peak_rss_mb']:.0f} | {m['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
