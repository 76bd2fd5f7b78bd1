"""`instructune templates list [SOURCE]` and `instructune templates render SOURCE TEMPLATE -n 3`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("templates", help="prompt templates: list them, render real examples")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="templates of every pack, or of one pack or YAML file")
    ls.add_argument("source", nargs="?", help="a pack name or a templates YAML file (default: all packs)")
    ls.set_defaults(func=list_templates)
    r = verbs.add_parser("render", help="print a template applied to real rows")
    r.add_argument("source", help="a pack name or a templates YAML file")
    r.add_argument("template", help="template id (`instructune templates list SOURCE`)")
    r.add_argument("-n", type=int, default=3, help="how many examples (default 3)")
    r.add_argument("--data", help="rows to render (a pack, or a CSV/JSONL/Parquet file); default: the "
                                  "templates' pack")
    r.add_argument("--seed", type=int, default=0, help="which rows are drawn (default 0)")
    r.set_defaults(func=render)


def list_templates(args: argparse.Namespace) -> int:
    from instructune.data.packs import PACKS
    from instructune.data.templates import load_templates
    from instructune.tables import show

    for source in [args.source] if args.source else list(PACKS):
        rows = [(t.id, t.task, ",".join(t.metrics), t.stop,
                 t.description + (f" Answers: {', '.join(t.choices.values())}." if t.choices else ""))
                for t in load_templates(source).values()]
        show(source, ("id", "task", "metrics", "stop", "description"), rows, ids=("id",))
    return 0


def render(args: argparse.Namespace) -> int:
    import random

    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.text import Text

    from instructune.data.sources import read_table
    from instructune.data.templates import RowError, get_template
    from instructune.errors import InstructuneError

    template = get_template(args.source, args.template)
    data = args.data or template.pack
    if not data:
        raise InstructuneError(f"{args.source} names no pack, so there are no rows to render: pass --data FILE.")
    table = read_table(data)
    picks = sorted(random.Random(args.seed).sample(range(len(table.rows)), min(max(args.n, 1), len(table.rows))))
    console = Console()
    for i in picks:
        try:
            prompt, completion = template.render(table.rows[i])
        except RowError as e:
            raise InstructuneError(f"{table.where[i]}: {e}") from None
        label = template.label_of(table.rows[i])
        title = f"{template.id} on {table.where[i]}" + (f" (label {label})" if label else "")
        console.print(Panel(Text(prompt), title=escape(title), title_align="left", subtitle="prompt",
                            subtitle_align="left"))
        console.print(Panel(Text(completion), subtitle=f"completion (stop: {template.stop})", subtitle_align="left",
                            border_style="green"))
    return 0
