"""`instructune sweep CONFIG.yaml [key=value ...] [--resume] [--workers N] [--storage URL]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters on the validation split (Optuna), test split sealed",
                       description="A training config with a `sweep:` block (params, trials, objective, pruner, "
                                   "forgetting, forgetting_budget). Writes sweep.json, sweep.md and best.yaml.")
    p.add_argument("config", help="YAML training config with a sweep: block (see configs/sweep-*.yaml)")
    p.add_argument("overrides", nargs="*", help="field=value overrides (sweep.trials=8, optim.lr=...)")
    p.add_argument("--resume", action="store_true", help="continue the study in the sweep folder")
    p.add_argument("--workers", type=int, default=1, help="trial processes on this machine sharing the study")
    p.add_argument("--storage", help="an Optuna storage URL (PostgreSQL for workers on several machines)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process started by --workers
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    import optuna

    from instructune.errors import InstructuneError
    from instructune.recipes.sweep import (  # deferred: optuna and torch load only to run
        load_sweep,
        start,
        sweep,
    )

    if args.workers < 1:
        raise InstructuneError(f"--workers must be at least 1, got {args.workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial has our own line; Optuna's INFO repeats it
    overrides = list(args.overrides) + ([f"sweep.storage={args.storage}"] if args.storage else [])
    base, settings = load_sweep(args.config, overrides)
    procs, resume = [], args.resume or args.worker
    if args.workers > 1 and not args.worker:
        start(base, settings, resume)  # the study exists before the other workers join it
        cmd = [sys.executable, "-m", "instructune", "sweep", args.config, *overrides, "--worker",
               "--workers", str(args.workers)]
        procs, resume = [subprocess.Popen(cmd) for _ in range(args.workers - 1)], True

    def join() -> None:
        for proc in procs:
            proc.wait()

    sweep(base, settings, resume=resume, workers=args.workers, worker=args.worker, join=join)
    return 0
