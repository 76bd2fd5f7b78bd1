"""`instructune results render|check|list [--root DIR]`: the docs' result tables, rendered from the result files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="render the docs' result tables from the committed result files",
                       description="Every results table in README.md and docs/*.md sits between "
                                   "`<!-- result: FILE#TABLE -->` and `<!-- /result -->` and is rendered from "
                                   "FILE (bench/results/*.json, results/*.json). `render` rewrites the blocks, "
                                   "`check` exits 1 when one differs from its file, `list` names every block.")
    p.add_argument("action", choices=["render", "check", "list"])
    p.add_argument("--root", default=".", help="the repository root (default: this folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instructune import results

    root = Path(args.root)
    if args.action == "list":
        for doc, ref, table in results.blocks(root):
            print(f"{doc}: {ref}#{table}")
        return 0
    if args.action == "check":
        stale = results.stale(root)
        for doc in stale:
            print(f"{doc}: a result table differs from its file; run `instructune results render`")
        return 1 if stale else 0
    changed = results.render(root)
    print("\n".join(f"rendered {doc}" for doc in changed) or "every result table is up to date")
    return 0
