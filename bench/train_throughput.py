"""Training throughput: instructune against TRL's SFTTrainer, the same work side by side on CPU.

    .venv/bin/python bench/train_throughput.py [--model smollm2-135m-instruct] [--steps 12] [--repeats 3]
        [--methods lora,full] [--threads 2] [--levers] [--out bench/results]

The same work for both: `steps * 8` rotten-tomatoes `sentiment` examples (one epoch, each seen once),
every one short enough to fit max_length 160 untruncated, the prompt rendered by the chat template as
`instructune.models.prompt_text` renders it; loss on the completion (and EOS) only; batch 8, AdamW,
linear schedule with 2 warmup steps, lr 5e-4 (LoRA r=16, alpha=32, dropout 0 on q,k,v,o,gate,up,down)
or 5e-5 (full), gradient clipping at 1.0, seed 0. TRL's own defaults are kept otherwise; in TRL 1.16
they are bf16 autocast and gradient checkpointing, so TRL also runs as `fp32` and `bf16` with
checkpointing off (instructune's default), and TRL fp32 is the 1.0x baseline. instructune bf16 also runs
with the attention kernels its `attention: auto` did not pick (it picks recompute on CPU): eager and sdpa.

Each (system, method, precision, repeat) is a fresh subprocess of this script (`--child`), so its peak
RSS is its own; repeats take turns with the other settings, so a busy machine slows them alike. A child
reports the seconds of the training steps only (instructune: the loop's own `train_seconds`, summed over
steps, in metrics.json; TRL: first `on_step_begin` to last `on_step_end`), the real (non-padding)
tokens it trained on, its peak RSS (`ru_maxrss`; TRL: straight after `train()`, instructune: after
`instructune train` returns, its end-of-run validation and saved adapter or model included; neither
writes a checkpoint: TRL `save_strategy="no"`, instructune `keep_checkpoints: 0`), and the validation loss
of the saved result, reloaded in fp32 the same way for both: mean cross-entropy per completion token of
64 fixed validation examples (`instructune.training.loop.validation_loss`).
Writes bench/results/train_throughput_<cpu class>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

PACK, TEMPLATE, SEED = "rotten-tomatoes", "sentiment", 0
BATCH, MAX_LENGTH, WARMUP, VAL_EXAMPLES = 8, 160, 2, 64
LR = {"lora": 5e-4, "full": 5e-5}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
FLOPS_FORMULA = ("FLOPs per real token = k*N + 12*L*d*T, with k = 6 for full fine-tuning (forward 2N, backward 4N) "
                 "and 4 for LoRA (frozen weights get no weight gradients; adapter FLOPs left out); N = every "
                 "parameter of the base model counted once (tied embeddings: the LM-head matmul); 12*L*d*T = "
                 "attention scores and values forward and backward (PaLM, appendix B), L layers, d hidden size, "
                 "T mean real length of a training example. MFU = real tokens/s * FLOPs per token / this "
                 "machine's 2048x2048 matmul peak in the run's precision.")


@dataclass(frozen=True)
class Setting:
    system: str
    """instructune | trl"""
    method: str
    """lora | full"""
    precision: str
    """fp32 | bf16 (autocast)"""
    threads: int
    grad_ckpt: bool = False
    group_by_length: bool = True
    """instructune only (TRL keeps its default, off)."""
    attention: str = "auto"
    """instructune only: auto (its default; recompute on CPU) | eager | sdpa (TRL keeps its default, sdpa)."""

    @property
    def label(self) -> str:
        ours = self.system == "instructune"
        return ", ".join([self.precision] + ["grad ckpt"] * self.grad_ckpt
                         + ["no length grouping"] * (ours and not self.group_by_length)
                         + [f"{self.attention} attention"] * (ours and self.attention != "auto"))


# --- parent: data, settings, children, summary


def prepare_data(model: str, n_train: int, folder: Path) -> dict[str, Any]:
    """A dataset folder both systems read: `n_train` seeded training examples that fit untruncated, 64 validation."""
    from instructune.data.build import load_tokenizer, prepare, read_split
    from instructune.data.task import subset
    from instructune.data.tokenize import encode

    source = prepare(PACK, [TEMPLATE], seed=SEED)
    tok = load_tokenizer(model)
    pool = read_split(source, "train")
    random.Random(SEED).shuffle(pool)
    train, lengths, completions, too_long = [], [], [], 0
    for r in pool:
        e = encode(tok, r["prompt"], r["completion"], 10**6)  # untruncated: instructune cuts prompts, TRL the end
        if len(e["input_ids"]) > MAX_LENGTH:
            too_long += 1
            continue
        train.append(r)
        lengths.append(len(e["input_ids"]))
        completions.append(sum(t != -100 for t in e["labels"]))
        if len(train) == n_train:
            break
    folder.mkdir(parents=True)
    for split, records in (("train", train), ("validation", subset(read_split(source, "validation"), VAL_EXAMPLES,
                                                                   SEED)), ("test", [])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy(source / "templates.json", folder / "templates.json")
    return {"source": f"{PACK} {TEMPLATE} ({source})", "train_examples": len(train), "validation_examples":
            VAL_EXAMPLES, "left_out_too_long": too_long, "lengths": lengths, "completion_lengths": completions}


def settings_for(methods: list[str], threads: int, levers: bool,
                 precisions: list[str]) -> tuple[list[Setting], list[tuple[str, Setting]]]:
    """The table's settings, and the instructune LoRA levers (each flips one thing of its default).

    `precisions[0]` is the one `precision: auto` picks on this machine: the other attention kernels
    and the levers run in it."""
    table = []
    for m in methods:
        for p in precisions:
            table.append(Setting("trl", m, p, threads))
            if p == "bf16":
                table.append(Setting("trl", m, p, threads, grad_ckpt=True))  # TRL 1.16's defaults as shipped
        for p in precisions:
            table.append(Setting("instructune", m, p, threads))
        # the attention kernels auto does not pick on CPU
        table += [Setting("instructune", m, precisions[0], threads, attention=a) for a in ("eager", "sdpa")]
    if not levers:
        return table, []
    base = Setting("instructune", "lora", precisions[0], threads)
    other = next((p for p in ("fp32", "bf16") if p != base.precision), "fp32")
    flips = [("baseline", base), ("precision", replace(base, precision=other)),
             ("group_by_length", replace(base, group_by_length=False)),
             ("gradient_checkpointing", replace(base, grad_ckpt=True)),
             ("threads", replace(base, threads=1 if threads > 1 else 2))]
    return table, flips


def run_child(s: Setting, model: str, folder: Path, steps: int, work: Path, tag: str) -> dict[str, Any]:
    """One training run in a fresh process; its JSON result, or the error and the tail of its log."""
    run_dir, result, log = work / tag, work / f"{tag}.result.json", work / f"{tag}.log"
    spec = {"setting": asdict(s), "model": model, "folder": str(folder), "steps": steps, "run_dir": str(run_dir),
            "result": str(result)}
    (work / f"{tag}.spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(work / f"{tag}.spec.json")],
                            stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    shutil.rmtree(run_dir, ignore_errors=True)  # a full fine-tune leaves GBs of checkpoints
    if rc != 0 or not result.exists():
        return {"error": f"exit status {rc}", "log_tail": log.read_text()[-3000:]}
    return {**json.loads(result.read_text()), "child_wall_s": time.perf_counter() - start}


def matmul_peak(threads: int, n: int = 2048, tries: int = 5) -> dict[str, float]:
    """GFLOP/s of the best of `tries` n x n matmuls, per precision, at `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b  # warm-up: first-call overheads
        best = time.perf_counter() - start
        for _ in range(tries if best < 1 else 0):  # a call over a second (emulated bf16) is measured enough
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        peak[name] = 2 * n**3 / best / 1e9
    return peak


def machine(model: str, threads: int) -> dict[str, Any]:
    """The CPU class of this run: CPU, its class, fp32 and bf16 matmul speed at the model's shapes."""
    import torch

    from instructune import hardware

    torch.set_num_threads(threads)
    return {**hardware.machine_summary(hardware.shapes_of(model)), "cores": os.cpu_count(),
            "versions": {p: version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate")}}


def summarise(runs: dict[Setting, list[dict]], peak: dict[str, float], mean_len: float) -> dict[Setting, dict]:
    """Medians over the repeats of each setting, and its MFU."""
    out = {}
    for s, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            out[s] = {"failed": len(results)}
            continue
        med = {k: statistics.median(r[k] for r in ok)
               for k in ("tokens_per_s", "train_seconds", "peak_rss_mb", "val_loss", "tokens")}
        first = ok[0]
        flops = (6 if s.method == "full" else 4) * first["params"] + 12 * first["layers"] * first["hidden"] * mean_len
        out[s] = {**med, "repeats": len(ok), "failed": len(results) - len(ok), "flops_per_token": flops,
                  "mfu": med["tokens_per_s"] * flops / (peak[s.precision] * 1e9)}
    return out


def token_check(data: dict, runs: dict[Setting, list[dict]]) -> dict[str, Any]:
    """Tokens per example as instructune encodes them and as TRL's SFTTrainer prepared them."""
    trl = next((r for rs in runs.values() for r in rs if "lengths" in r), None)
    mine = {"mean_tokens": statistics.mean(data["lengths"]),
            "mean_completion_tokens": statistics.mean(data["completion_lengths"])}
    if trl is None:
        return {"instructune": mine}
    pairs = list(zip(data["lengths"], trl["lengths"])) + list(zip(data["completion_lengths"],
                                                                 trl["completion_lengths"]))
    return {"instructune": mine, "trl": {"mean_tokens": statistics.mean(trl["lengths"]),
                                         "mean_completion_tokens": statistics.mean(trl["completion_lengths"])},
            "same_examples": len(trl["lengths"]) == len(data["lengths"]),
            "max_difference_per_example": max(abs(a - b) for a, b in pairs),
            "trl_completion_only_loss": trl["completion_only_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=12, help="optimiser steps (batch 8): one epoch of steps*8 examples")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    p.add_argument("--levers", action="store_true", help="also flip single instructune LoRA settings")
    p.add_argument("--precisions", default="auto",
                   help="fp32,bf16 or one of them; auto = both, the one `precision: auto` picks here first")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(Path(args.child))

    load_before = os.getloadavg()[0]
    peak = matmul_peak(args.threads)
    host = machine(args.model, args.threads)
    precisions = args.precisions.split(",")
    if precisions == ["auto"]:
        precisions = sorted(["fp32", "bf16"], key=lambda p: p != host["auto_precision"])
    if "fp32" not in precisions:
        sys.exit("--precisions must include fp32: TRL fp32 is the 1.0x baseline")
    table, levers = settings_for(args.methods.split(","), args.threads, args.levers, precisions)
    settings = list(dict.fromkeys(table + [s for _, s in levers]))
    runs: dict[Setting, list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        data = prepare_data(args.model, args.steps * BATCH, work / "data")
        for rep in range(args.repeats):
            for i, s in enumerate(settings):
                r = run_child(s, args.model, work / "data", args.steps, work, f"{i}-{rep}")
                runs[s].append(r)
                done = f"{r['tokens_per_s']:.0f} real tokens/s" if "error" not in r else f"FAILED ({r['error']})"
                print(f"repeat {rep + 1}/{args.repeats}: {s.system} {s.method} {s.label}: {done}", file=sys.stderr)
                if "error" in r:
                    print(r["log_tail"], file=sys.stderr)
    mean_len = statistics.mean(data["lengths"])
    summary = summarise(runs, peak, mean_len)
    result = {"model": args.model, "steps": args.steps, "batch_size": BATCH, "repeats": args.repeats,
              "machine": host, "load_average": {"before": load_before, "after": os.getloadavg()[0]},
              "matmul_peak_gflops": peak, "flops_formula": FLOPS_FORMULA, "mean_example_tokens": mean_len,
              "data": {k: v for k, v in data.items() if not k.endswith("lengths")}, "tokens": token_check(data, runs),
              "rows": [{**asdict(s), "label": s.label, **summary[s]} for s in table],
              "levers": [{"lever": name, **asdict(s), "label": s.label, **summary[s]} for name, s in levers],
              "runs": [{**asdict(s), **{k: v for k, v in r.items() if not k.endswith("lengths")}}
                       for s, rs in runs.items() for r in rs]}
    write(Path(args.out), result)
    if any(r.get("failed") for r in summary.values()):
        sys.exit("some runs failed (see the log tails above and `runs` in the JSON)")


def write(out: Path, result: dict) -> None:
    from instructune.hardware import describe_machine
    from instructune.results import write_results


    m, t, d = result["machine"], result["tokens"], result["data"]
    lines = [f"Training throughput, {result['model']}: {result['steps']} steps of batch {result['batch_size']}, "
             f"median of {result['repeats']}; {describe_machine(m)}; {m['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + f"; load average {result['load_average']['before']:.1f} before, {result['load_average']['after']:.1f} "
             "after.", "",
             f"- data: {d['train_examples']} training examples of {d['source']} that fit {MAX_LENGTH} tokens "
             f"untruncated ({d['left_out_too_long']} longer ones left out), {d['validation_examples']} validation",
             f"- tokens per example, instructune: {t['instructune']['mean_tokens']:.1f} "
             f"({t['instructune']['mean_completion_tokens']:.2f} with loss)"]
    if "trl" in t:
        lines.append(f"- tokens per example, TRL SFTTrainer: {t['trl']['mean_tokens']:.1f} "
                     f"({t['trl']['mean_completion_tokens']:.2f} with loss); largest difference on one example: "
                     f"{t['max_difference_per_example']}; completion_only_loss: {t['trl_completion_only_loss']}")
    peak = result["matmul_peak_gflops"]
    lines += [f"- matmul peak (2048x2048, best of 5): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s",
              f"- {result['flops_formula']}", "",
              "| method | system | precision | real tokens/s | speed-up vs TRL fp32 | peak RSS MB | final val loss | MFU |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        base = next(b for b in result["rows"] if b["method"] == r["method"] and b["system"] == "trl"
                    and b["label"] == "fp32")
        note = (" (TRL's defaults)" if r["grad_ckpt"] else
                " (auto here)" if r["system"] == "instructune" and r["precision"] == m["auto_precision"]
                and r["attention"] == "auto" else "")
        lines.append(_row([r["method"], r["system"], r["label"] + note], r, base))
    if result["levers"]:
        lines += ["", f"instructune LoRA, one lever flipped from its {result['levers'][0]['precision']} default:", "",
                  "| lever | setting | threads | real tokens/s | vs baseline | peak RSS MB | final val loss | MFU |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["levers"]:
            lines.append(_row([r["lever"], r["label"], str(r["threads"])], r, result["levers"][0]))
    lines += ["", "Real tokens are non-padding tokens (prompt and completion); seconds are those of the training "
              "steps only. The validation loss is the mean cross-entropy per completion token of the saved result, "
              "reloaded in fp32 the same way for every run."]
    result["tables"] = {"summary": summary_table(result)}
    write_results(out, "train_throughput", result, "\n".join(lines))


def summary_table(result: dict) -> dict:
    """Per method: TRL's settings beside instructune's defaults (what `precision: auto` picked, attention auto),
    as speed-ups against TRL's defaults (bf16, gradient checkpointing) and against TRL's fastest setting."""
    from instructune.results import table

    rows, auto = [], result["machine"].get("auto_precision")
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        mine = [r for r in result["rows"] if r["method"] == method and "tokens_per_s" in r]
        trl = {("defaults" if r["grad_ckpt"] else r["precision"]): r["tokens_per_s"] for r in mine if r["system"] == "trl"}
        ours = next(r["tokens_per_s"] for r in mine if r["system"] == "instructune" and r["precision"] == auto
                    and r["attention"] == "auto")
        cell = {k: f"{v:.0f}" if v else "not run" for k, v in
                {"fp32": trl.get("fp32"), "bf16": trl.get("bf16"), "defaults": trl.get("defaults")}.items()}
        rows.append([f"{result['machine']['cpu_class']} ({auto} picked)", method, cell["fp32"], cell["bf16"],
                     cell["defaults"], f"{ours:.0f}", f"{ours / trl['defaults']:.2f}x" if "defaults" in trl else "-",
                     f"{ours / max(trl.values()):.2f}x"])
    return table(["CPU class", "method", "TRL fp32", "TRL bf16", "TRL's defaults (bf16, grad ckpt)",
                  "instructune defaults", "vs TRL's defaults", "vs TRL's fastest"], rows, "llrrrrrr")


def _row(cells: list[str], r: dict, base: dict) -> str:
    if "tokens_per_s" not in r:
        return "| " + " | ".join(cells) + " | failed | | | | |"
    speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if "tokens_per_s" in base else "-"
    return ("| " + " | ".join(cells) + f" | {r['tokens_per_s']:.0f} | {speed} | {r['peak_rss_mb']:.0f} | "
            f"{r['val_loss']:.4f} | {100 * r['mfu']:.1f}% |")


# --- child: one training run, then the shared validation loss


def child(spec_path: Path) -> None:
    import torch

    spec = json.loads(spec_path.read_text())
    s = Setting(**spec["setting"])
    torch.set_num_threads(s.threads)
    train = train_instructune if s.system == "instructune" else train_trl
    out = train(s, spec["model"], Path(spec["folder"]), spec["steps"], Path(spec["run_dir"]))
    out["tokens_per_s"] = out["tokens"] / out["train_seconds"]
    out.update(evaluate(s.method, spec["model"], Path(out.pop("saved")), Path(spec["folder"])))
    Path(spec["result"]).write_text(json.dumps(out))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

def train_instructune(s: Setting, model: str, folder: Path, steps: int, run_dir: Path) -> dict[str, Any]:
    """`instructune train CFG.yaml`, in this process (what `python -m instructune` calls)."""
    import yaml

    from instructune.cli import main as instructune

    method = {"name": "lora", **LORA} if s.method == "lora" else {"name": "full"}
    cfg = {"model": model, "output_dir": str(run_dir), "method": method, "batch_size": BATCH, "max_steps": steps,
           "data": {"source": str(folder), "templates": [TEMPLATE], "max_length": MAX_LENGTH, "train_limit": None,
                    "val_limit": VAL_EXAMPLES, "test_limit": None},
           "optim": {"lr": LR[s.method], "warmup_steps": WARMUP, "schedule": "linear"}, "seed": SEED,
           "precision": s.precision, "threads": s.threads, "gradient_checkpointing": s.grad_ckpt,
           "group_by_length": s.group_by_length,
           "attention": s.attention,
           "eval_every": 0, "save_every": 0, "eval_mode": "likelihood",  # one cheap validation, after the last step
           "keep_checkpoints": 0}  # no checkpoint, as TRL's run (save_strategy "no")
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if instructune(["train", str(path)]) != 0:
        raise SystemExit("instructune train failed")
    peak = _peak_rss_mb()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"peak_rss_mb": peak, "train_seconds": metrics["train_seconds"], "tokens": metrics["train_tokens"],
            "steps": metrics["steps"], "padding_fraction": metrics["padding_fraction"],
            "own_val_loss": metrics["validation"]["loss"], "command": f"instructune train {path.name}",
            "attention_used": metrics["attention"],
            "saved": str(run_dir / ("adapter" if s.method == "lora" else "model"))}


def train_trl(s: Setting, model: str, folder: Path, steps: int, run_dir: Path) -> dict[str, Any]:
    """SFTTrainer with its defaults, except what makes the work equal to instructune's."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from instructune.data.build import load_tokenizer, read_split
    from instructune.data.prompt import prompt_text
    from instructune.data.tokenize import completion_text
    from instructune.models import resolve_model

    path, tok = resolve_model(model), load_tokenizer(model)
    rows = [{"prompt": prompt_text(tok, r["prompt"]), "completion": completion_text(tok, r["prompt"], r["completion"])}
            for r in read_split(folder, "train")]
    args = SFTConfig(output_dir=str(run_dir), per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                     max_steps=steps, learning_rate=LR[s.method], warmup_steps=WARMUP, lr_scheduler_type="linear",
                     seed=SEED, report_to="none", save_strategy="no", use_cpu=True, bf16=s.precision == "bf16",
                     gradient_checkpointing=s.grad_ckpt)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["targets"], task_type="CAUSAL_LM") if s.method == "lora" else None
    trainer = SFTTrainer(model=path, args=args, train_dataset=Dataset.from_list(rows), peft_config=lora)
    prepared = trainer.train_dataset
    counts = {"real": 0, "slots": 0}
    collate = trainer.data_collator

    def counting(examples: list[dict]) -> dict:  # TRL's own collator, counting what it hands the model
        batch = collate(examples)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["slots"] += batch["attention_mask"].numel()
        return batch

    class StepTimes(TrainerCallback):
        first = last = None

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.first = self.first or time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.last = time.perf_counter()

    timer = StepTimes()
    trainer.data_collator = counting
    trainer.add_callback(timer)
    trainer.train()
    peak = _peak_rss_mb()
    saved = run_dir / ("adapter" if s.method == "lora" else "model")
    trainer.save_model(str(saved))
    return {"peak_rss_mb": peak, "train_seconds": timer.last - timer.first, "tokens": counts["real"],
            "steps": trainer.state.global_step, "padding_fraction": 1 - counts["real"] / counts["slots"],
            "completion_only_loss": trainer.completion_only_loss, "optim": getattr(args.optim, "value", args.optim),
            "attention_used": trainer.model.config._attn_implementation,
            "lengths": [len(x) for x in prepared["input_ids"]],
            "completion_lengths": [sum(t != -100 for t in x) for x in prepared["labels"]], "saved": str(saved)}


def evaluate(method: str, model: str, saved: Path, folder: Path) -> dict[str, Any]:
    """Validation loss of the saved result, reloaded in fp32, and the base model's shape for the FLOPs."""
    import gc

    from instructune.adapters.attach import load_adapted
    from instructune.data.build import read_split
    from instructune.data.tokenize import encode_records
    from instructune.models import load_model
    from instructune.training.batching import validation_loss

    gc.collect()  # the trained model and its optimiser are gone: their memory is not counted twice
    trained, tok = load_model(str(saved)) if method == "full" else load_adapted(model, str(saved))
    examples, _ = encode_records(read_split(folder, "validation"), tok, 10**6)
    loss = validation_loss(trained, examples, tok.pad_token_id)
    params = sum(p.numel() for n, p in trained.named_parameters() if "lora_" not in n)
    cfg = trained.config
    return {"val_loss": loss, "params": params, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}


if __name__ == "__main__":
    main()
