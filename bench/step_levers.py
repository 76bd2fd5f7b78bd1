"""Training-step levers measured side by side in one process: what a step costs with each.

    .venv/bin/python bench/step_levers.py [--model smollm2-135m-instruct] [--steps 6] [--threads 2]

One full fine-tuning step (forward, backward, fused AdamW) of batch 8 in bf16 autocast, as the
engine runs it (`instructune.training.batching.completion_loss_sum`), on rotten-tomatoes sentiment
examples (the chat-template prompt and its one-word answer; real lengths, padded per batch):

- baseline: the engine's default, the output layer computed only at completion positions;
- all logits: the output layer at every position (what a plain `model(**batch).loss` does);
- torch.compile: the baseline with the model's forward compiled by TorchInductor (dynamic shapes).

Each lever gets a freshly loaded model and the same batches, and the levers take turns step by
step, so a busy moment slows them alike; the first two steps are warm-up (compilation happens
there and is reported separately), the median of the rest is the step time.
Writes bench/results/step_levers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

BATCH, MAX_LENGTH, WARMUP_STEPS = 8, 160, 2


def batches(model: str, steps: int) -> list[dict[str, Any]]:
    from instructune.data.build import load_tokenizer, prepare, read_split
    from instructune.data.tokenize import encode
    from instructune.training.batching import collate

    tok = load_tokenizer(model)
    rows = read_split(prepare("rotten-tomatoes", ["sentiment"], seed=0), "train")[:BATCH * steps]
    examples = [encode(tok, r["prompt"], r["completion"], MAX_LENGTH) for r in rows]
    return [collate(examples[i:i + BATCH], tok.pad_token_id) for i in range(0, len(examples), BATCH)]


class Lever:
    """A freshly loaded model and its optimiser, stepped with one setting."""

    def __init__(self, model_name: str, only_completion_logits: bool, compiled: bool) -> None:
        import torch

        from instructune.models import load_model
        from instructune.recipes.finetune import adamw
        from instructune.training.config import OptimConfig

        torch.manual_seed(0)
        self.model, _ = load_model(model_name)
        self.model.train()
        self.optimizer = adamw([p for p in self.model.parameters() if p.requires_grad], OptimConfig(lr=5e-5))
        if compiled:
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
        self.only = only_completion_logits
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, batch: dict[str, Any]) -> None:
        import torch

        from instructune.training.batching import completion_loss_sum

        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = completion_loss_sum(self.model, batch, self.only)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)
        self.losses.append(float(loss))

    def summary(self, data: list[dict]) -> dict[str, Any]:
        real_tokens = sum(int(b["attention_mask"].sum()) for b in data[WARMUP_STEPS:])
        steady = self.times[WARMUP_STEPS:]
        return {"step_s": statistics.median(steady), "warmup_s": sum(self.times[:WARMUP_STEPS]),
                "tokens_per_s": real_tokens / sum(steady), "times": self.times, "losses": self.losses}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8, help="steps per lever, the first two of them warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(args.model, args.steps)
    settings = {"baseline": (True, False), "all logits": (False, False), "torch.compile": (True, True)}
    levers = {name: Lever(args.model, only, compiled) for name, (only, compiled) in settings.items()}
    for i, batch in enumerate(data):  # step i of every lever in turn: a busy moment slows them alike
        for name, lever in levers.items():
            lever.step(batch)
            print(f"step {i + 1}/{len(data)} {name}: {lever.times[-1]:.2f} s", flush=True)
    results = {name: lever.summary(data) for name, lever in levers.items()}
    result = {"model": args.model, "threads": args.threads, "batch": BATCH, "steps": args.steps,
              "torch": torch.__version__, "levers": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_levers.json").write_text(json.dumps(result, indent=2))
    (out / "step_levers.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    base = r["levers"]["baseline"]
    lines = [f"Full fine-tuning step of {r['model']}, batch {r['batch']}, bf16 autocast, fused AdamW, "
             f"{r['threads']} threads, torch {r['torch']}; median of {r['steps'] - WARMUP_STEPS} steps after "
             f"{WARMUP_STEPS} warm-up steps, the same batches for every lever, taking turns step by step.", "",
             "| lever | step s | real tokens/s | vs baseline | warm-up s (2 steps) |", "|---|---:|---:|---:|---:|"]
    for name, m in r["levers"].items():
        lines.append(f"| {name} | {m['step_s']:.2f} | {m['tokens_per_s']:.0f} | {base['step_s'] / m['step_s']:.2f}x "
                     f"| {m['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
