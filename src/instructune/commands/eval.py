"""`instructune eval --model M [--adapter A ...] --data DIR_OR_PACK --template T [--shots 0,1,5]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models, adapters and zero/few-shot prompting side by side")
    p.add_argument("--model", action="append", default=None,
                   help="model pack, folder or hub id (repeat to compare several; default smollm2-135m-instruct)")
    p.add_argument("--adapter", action="append", default=[], help="peft adapter folder on the first model (repeat)")
    p.add_argument("--data", required=True, help="data pack, data file, or dataset folder from `data build`")
    p.add_argument("--template", required=True, help="template id")
    p.add_argument("--template-file", help="user YAML templates (with --data FILE)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--shots", default="0", help="comma-separated in-context exemplar counts, e.g. 0,1,5")
    p.add_argument("--limit", type=int, help="evaluate this many examples (always the same seeded subset)")
    p.add_argument("--mode", default="generate", choices=["generate", "likelihood"],
                   help="classification: generate an answer, or pick the most likely choice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto (default) measures bf16 against fp32 on this CPU (see `instructune doctor`)")
    p.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    p.add_argument("--out", default="runs/eval", help="folder for eval.json and predictions.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructune.errors import InstructuneError
    from instructune.hardware import setup_threads
    from instructune.recipes.evaluate import evaluate, print_table

    try:
        shots = sorted({int(s) for s in args.shots.split(",") if s.strip()})
    except ValueError:
        raise InstructuneError(f"--shots must be comma-separated integers like 0,1,5; got {args.shots!r}") from None
    if not shots or min(shots) < 0:
        raise InstructuneError(f"--shots needs counts >= 0, like 0,1,5; got {args.shots!r}")
    if args.limit is not None and args.limit < 1:
        raise InstructuneError(f"--limit must be at least 1, got {args.limit}")
    setup_threads(args.threads)
    report = evaluate(args.model or ["smollm2-135m-instruct"], args.adapter, args.data, args.template,
                      split=args.split, shots=shots, limit=args.limit, mode=args.mode, seed=args.seed,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                      template_file=args.template_file, out=args.out)
    print_table(report)
    print(f"wrote {args.out}/eval.json and predictions.csv")
    return 0
