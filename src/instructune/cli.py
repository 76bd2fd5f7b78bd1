"""`instructune` command line: each subcommand lives in `instructune.commands.<name>`.

A command module defines `register(subparsers)`, which adds its parser and sets `func`;
heavy imports (torch, transformers) happen inside `func` so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from instructune import __version__
from instructune.errors import InstructuneError

COMMANDS = ["models", "generate", "train", "eval", "forgetting", "sequential", "demo", "adapters", "serve", "data", "templates", "report",
            "doctor", "sweep", "results"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune",
        description="Instruction fine-tuning of language models: data, training, evaluation, forgetting, adapters.")
    parser.add_argument("--version", action="version", version=f"instructune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"instructune.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # `train CONFIG --resume lr=1e-4`: overrides after a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except InstructuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, advisory warnings) hides our own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from inside the libraries
