"""`instructune report RUN_DIR [RUN_DIR ...] [--out DIR]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="make an HTML report and a Markdown summary of run folders",
                       description="Finds every metrics.json, eval.json, forgetting.json and run_info.json below "
                                   "the folders given and writes report.html (self-contained, charts embedded) "
                                   "and report.md (charts in report_files/).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="folders written by `instructune train`, `eval`, `forgetting` or `demo`")
    p.add_argument("--out", help="output folder (default: the first RUN_DIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from instructune.report import build_report

    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (dirs[0] if dirs[0].is_dir() else dirs[0].parent) / "report"
    paths = build_report(dirs, out)
    print(paths["html"])
    print(paths["md"])
    return 0
