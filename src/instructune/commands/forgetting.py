"""`instructune forgetting CONFIG.yaml [key=value ...]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forgetting", help="train once per forgetting cure and compare what each run forgot",
                       description="Scores the retention suite on the original model, trains the target task "
                                   "once per cure (plus plain full fine-tuning and plain LoRA), scores every "
                                   "tuned model on the same examples, and writes forgetting.json and a table.")
    p.add_argument("config", help="YAML config (see configs/forgetting-rotten-tomatoes.yaml)")
    p.add_argument("overrides", nargs="*", help="field=value overrides, e.g. train.max_steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructune.recipes.forgetting import forgetting, load_forgetting_config

    cfg = load_forgetting_config(args.config, args.overrides)
    result = forgetting(cfg)
    from instructune.recipes.forgetting import markdown_table

    print(markdown_table(result["cures"]))
    print(f"wrote {cfg.output_dir}/forgetting.json")
    return 0
