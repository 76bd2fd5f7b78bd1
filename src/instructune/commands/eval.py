"""`instructune eval --model M [--adapter A ...] --data DIR_OR_PACK --template T [--shots 0,1,5]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `--help` does not load the evaluation
    from instructune.evaluation.settings import EvalSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models, adapters and zero/few-shot prompting side by side")
    p.add_argument("--model", action="append", default=None,
                   help="model pack, folder or hub id (repeat to compare several; default smollm2-135m-instruct)")
    p.add_argument("--adapter", action="append", default=[],
                   help="an adapter on the first model (repeat): a registered name (`instructune adapters list`), "
                        "an adapter folder, or a training run's folder")
    p.add_argument("--data", help="data pack, data file, or dataset folder from `data build`")
    p.add_argument("--template", help="template id (default: the data's only one, like alpaca or messages; with "
                                      "--run: the run's first)")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="a training run's folder: its data, templates and split (so exactly its test rows)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation/test split (default 0)")
    p.add_argument("--fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions (default 0.8 0.1 0.1)")
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
    p.add_argument("--out", help="folder for eval.json and predictions.csv (default: RUN_DIR/eval with --run, "
                                 "else runs/eval)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructune.errors import InstructuneError, collect
    from instructune.hardware import setup_threads
    from instructune.recipes.evaluate import evaluate, print_table

    if args.out is None:  # a run's evaluation stays beside it: a second --run does not overwrite the first
        args.out = str(Path(args.run) / "eval") if args.run else "runs/eval"
    try:
        shots = sorted({int(s) for s in args.shots.split(",") if s.strip()})
    except ValueError:
        raise InstructuneError(f"--shots must be comma-separated integers like 0,1,5; got {args.shots!r}") from None
    settings = _settings_of(args, shots=shots, limit=args.limit, mode=args.mode, seed=args.seed,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    collect([_as_flag(p) for p in settings.problems()], "invalid eval flags")
    setup_threads(args.threads)
    report = evaluate(args.model or ["smollm2-135m-instruct"], args.adapter, settings, out=Path(args.out))
    print_table(report)
    print(f"wrote {args.out}/eval.json and predictions.csv")
    return 0


def _settings_of(args: argparse.Namespace, **fields: int | str | list[int] | None) -> EvalSettings:
    """The task and split to score: from --run's config.yaml, else from --data, --template and the split flags;
    `fields` are the other settings, from their flags."""
    from instructune.data.task import DEFAULT_FRACTIONS
    from instructune.errors import InstructuneError
    from instructune.evaluation.settings import EvalSettings

    if not args.run:
        if not args.data:
            raise InstructuneError("eval needs --data (and --template unless the data has one: alpaca or chat "
                                   "records), or --run RUN_DIR, a training run's folder.")
        return EvalSettings.of(args.data, args.template, args.split, template_file=args.template_file,
                               data_seed=args.data_seed, fractions=args.fractions or list(DEFAULT_FRACTIONS),
                               **fields)

    import yaml

    path = Path(args.run) / "config.yaml"
    if not path.is_file():
        raise InstructuneError(f"--run {args.run}: no config.yaml there; point --run at a folder `instructune train` "
                               "wrote.")
    d = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    built = list(d.get("templates") or [])
    return EvalSettings.of(d.get("source", "rotten-tomatoes"), args.template or (built[0] if built else None),
                           args.split, template_file=d.get("template_file"), data_seed=d.get("seed", 0),
                           fractions=d.get("fractions") or list(DEFAULT_FRACTIONS), built_with=built or None,
                           data_format=d.get("format") or "auto", **fields)


FLAGS = {"held_out": "split", "split.seed": "data-seed", "split.fractions": "fractions", "task.source": "data"}
"""Settings whose flag has another name (the rest: `max_new_tokens` is --max-new-tokens)."""


def _as_flag(problem: str) -> str:
    """A settings problem (`limit must be ...`) in the words of the flags (`--limit must be ...`)."""
    name, _, rest = problem.partition(" ")
    return f"--{FLAGS.get(name, name.replace('_', '-'))} {rest}"
