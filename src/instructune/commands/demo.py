"""`instructune demo [--quick] [CONFIG] [key=value ...]`: the main job, end to end."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole story: base vs fine-tuned, forgetting and its cures, a report",
                       description="Pulls the default model, evaluates it zero/few-shot, fine-tunes it with full "
                                   "fine-tuning, LoRA and a forgetting cure, measures forgetting, and writes an "
                                   "HTML report. Results whose inputs are unchanged are reused.")
    p.add_argument("config", nargs="?", help="YAML config (default: the packaged configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="field=value overrides, e.g. forgetting.train.max_steps=30")
    p.add_argument("--quick", action="store_true", help="a small smoke run of every step (runs/demo-quick)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructune.recipes.demo import demo

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # `instructune demo key=value` without a config file
        config, overrides = None, [config, *overrides]
    demo(config, overrides, quick=args.quick)
    return 0
