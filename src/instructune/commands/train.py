"""`instructune train CONFIG.yaml [key=value ...] [--resume]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model (full or PEFT) on instruction data",
                       description="Fine-tune with a YAML config; any field can be overridden as key=value "
                                   "(dotted for nested fields: optim.lr=3e-4 method.r=16). Works unchanged "
                                   "under `accelerate launch` and `torchrun`.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="field=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output_dir that holds other files (they are kept), or start a finished "
                        "run's folder afresh")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue although the training data changed since the checkpoint")
    p.add_argument("--show-fields", action="store_true", help="print every config field with its meaning and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from instructune.config import load_config
    from instructune.training.config import TrainConfig

    if args.show_fields:
        print_fields(TrainConfig)
        return 0
    cfg = load_config(TrainConfig, args.config, args.overrides)
    from instructune.progress import say
    from instructune.training.setup import main_process
    from instructune.training.trainer import train

    log = say if main_process() else (lambda *_: None)  # one copy under torchrun, above the train bar
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, allow_data_change=args.allow_data_change,
                   log=log)
    if not result.finished:  # pre-empted: `train && next-step` must not go on
        again = " ".join(["instructune train", args.config, *args.overrides, "--resume"])
        print(f"to continue: {again}", file=sys.stderr)
        return 130 if "SIGINT" in result.stopped else 143
    return 0


def print_fields(cls: type, prefix: str = "", defaults: object = None) -> None:
    """Every field with its type, default and meaning; `defaults` is a flat section's value in its parent."""
    import dataclasses
    import typing

    from instructune.config import field_docs, is_flat, type_name
    from instructune.methods import METHODS, MethodOptions

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if tp is MethodOptions:  # each method's own options, written beside `name`
            for method in METHODS.values():
                print(f"(options of {prefix}name: {method.name})")
                print_fields(method.options, prefix)
        elif dataclasses.is_dataclass(tp) and is_flat(f):  # its keys sit beside the parent's, with its defaults
            factory = f.default_factory  # a required section (a keep entry's task) has no defaults
            print_fields(tp, prefix, factory() if factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        elif dataclasses.is_dataclass(tp):
            print_fields(tp, f"{prefix}{f.name}.")
        else:
            if defaults is not None:  # a flat section's field: its parent's default for it
                default = getattr(defaults, f.name)
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "required"
            print(f"{prefix}{f.name}: {type_name(tp)} = {str(default) if hasattr(default, 'as_posix') else repr(default)}\n    {field_docs(cls).get(f.name, '')}")
            for sub in inner:
                print_fields(sub, f"{prefix}{f.name}[].")
