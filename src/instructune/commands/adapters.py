"""`instructune adapters add|list|show|remove|merge`: the adapter registry."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from instructune.types import JSON


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="register, list, inspect, remove and merge trained adapters")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="copy an adapter folder into the registry under NAME")
    add.add_argument("name", help="registry name: letters, digits, '.', '_', '-'")
    add.add_argument("path", help="a peft adapter folder, or a training run folder holding adapter/")
    add.add_argument("--task", help="what the adapter was trained for (default: metrics.json's task)")
    add.add_argument("--base", help="the base model it is meant for; refused if the architecture differs")
    add.add_argument("--force", action="store_true", help="replace an adapter already registered as NAME")
    add.set_defaults(func=add_cmd)
    ls = verbs.add_parser("list", help="the registered adapters with their base, method, size and scores")
    ls.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls.set_defaults(func=list_cmd)
    show = verbs.add_parser("show", help="everything recorded about one adapter")
    show.add_argument("name")
    show.set_defaults(func=show_cmd)
    rm = verbs.add_parser("remove", help="delete an adapter from the registry")
    rm.add_argument("name")
    rm.set_defaults(func=remove_cmd)
    merge = verbs.add_parser("merge", help="fold an adapter into its base: a full model plain transformers loads")
    merge.add_argument("name", help="registry name or adapter folder")
    merge.add_argument("--out", required=True, help="folder to write (safetensors + tokenizer)")
    merge.add_argument("--base", help="base model (default: the one the adapter records)")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    merge.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    merge.set_defaults(func=merge_cmd)


def add_cmd(args: argparse.Namespace) -> int:
    from instructune.adapters.registry import get_adapter, register_adapter

    folder = register_adapter(args.name, args.path, task=args.task, base=args.base, overwrite=args.force)
    rec = get_adapter(args.name)
    print(f"registered '{args.name}' ({rec['method']}, {rec['trainable_params']:,} params, base {rec['base']}) "
          f"in {folder}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from instructune.adapters.registry import list_adapters
    from instructune.tables import show

    records = list_adapters()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no adapters registered; add one with `instructune adapters add NAME PATH`")
        return 0
    rows = [(r["name"], r["base"], r["method"], f"{r['trainable_params']:,}", _size(r["size_bytes"]),
             r.get("task") or "-", _scores(r.get("metrics") or {})) for r in records]
    show("adapters", ("name", "base", "method", "params", "size", "task", "scores"), rows, ids=("name", "base"))
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    from instructune.adapters.registry import get_adapter

    print(json.dumps(get_adapter(args.name), indent=2))
    return 0


def remove_cmd(args: argparse.Namespace) -> int:
    from instructune.adapters.registry import remove_adapter

    remove_adapter(args.name)
    print(f"removed '{args.name}'")
    return 0


def merge_cmd(args: argparse.Namespace) -> int:
    from instructune.adapters.merge import merge_adapter

    info = merge_adapter(args.name, args.out, base=args.base, dtype=args.dtype, overwrite=args.force)
    print(f"merged '{args.name}' into {info['base']}: {info['path']} (max logit difference vs unmerged "
          f"{info['max_logit_diff']:.1e}; tied embeddings: {'yes' if info['tied_embeddings'] else 'no'})")
    return 0


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _scores(metrics: JSON) -> str:
    items = [f"{k}={v:.3g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in metrics.items()]
    return ", ".join(items) or "-"
