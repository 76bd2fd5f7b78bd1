"""Result files: every published number comes from one, and the docs' tables are rendered from them.

A result file is the JSON that `write_results` writes (`bench/results/*.json`, `results/*.json`):

    schema      SCHEMA (a file of another version is refused, naming it)
    name        what was measured: "demo", "train_throughput", ...
    command     the exact command that produced it
    config      the configuration it ran (a dict), or null where the command line says it all
    commit      the code's git commit; "+dirty" when the working tree had changes
    date        when it was written (UTC)
    machine     `hardware.machine_summary()`: CPU, class, flags, fp32 and bf16 matmul GFLOP/s, threads, torch
    tables      {name: {"columns": [...], "align": "lrr...", "rows": [[cell, ...], ...]}}: what the docs show
    provenance  (optional) how the file came to be when the run did not write it itself
    ...         the measurement's own fields (rows, metrics, settings)

A table's place in README.md or docs/*.md is marked, and everything between the markers is rendered:

    <!-- result: results/demo_avx2.json#methods -->
    | method | ... |
    <!-- /result -->

`instructune results render` rewrites every marked block from its file; `instructune results check`
(and the test suite) fails when a block differs, so a stale number cannot land.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from instructune.errors import InstructuneError
from instructune.files import write_atomic
from instructune.types import JSON, JSONValue

SCHEMA = 1
"""Version of the result-file layout above."""
REQUIRED = ("schema", "name", "command", "commit", "date", "machine", "tables")
"""Fields every result file carries."""
MACHINE_FIELDS = ("cpu", "cpu_class", "flags", "fp32_gflops", "bf16_gflops", "torch")
"""What `machine` must say: the CPU class beside every number, and how fast its matmuls were."""
BLOCK = re.compile(r"^(<!-- result: (?P<ref>[^ #]+)#(?P<table>[\w.-]+) -->\n)(?P<body>.*?)^(<!-- /result -->)", re.S | re.M)
"""A marked block: the markers start their lines (an indented example of them is left alone)."""
DOCS = ("README.md", "docs/*.md")
"""The files whose result blocks are rendered (globs, relative to the repository root)."""


# --- writing


def git_commit(root: Path | None = None) -> str:
    """The code's commit, "+dirty" when tracked files have changes; "unknown" outside a checkout."""
    cwd = root or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(command: str | None = None, config: JSONValue = None) -> JSON:
    """The fields that say where a result came from (the machine is added by the writer)."""
    return {"schema": SCHEMA, "command": command or this_command(), "config": config, "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def this_command() -> str:
    """This process's command line as typed: `python bench/x.py --steps 8`, `instructune demo`."""
    first = sys.argv[0]
    words = ["python", first] if first.endswith(".py") else [Path(first).name]
    return shlex.join(words + sys.argv[1:])


def table(columns: list[str], rows: Iterable[Iterable[object]], align: str | None = None) -> JSON:
    """One table of a result file: header, alignment (`l` or `r` per column, numbers right) and rows of text."""
    rows = [[str(c) for c in r] for r in rows]
    return {"columns": list(columns), "align": align or "l" * len(columns), "rows": rows}


def parse_tables(markdown: str) -> dict[str, JSON]:
    """The pipe tables of a Markdown text, named `main`, `t2`, `t3`, ... in order."""
    out: dict[str, JSON] = {}
    lines = markdown.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            cells = _cells(lines[i])
            align = "".join("r" if c.strip().endswith(":") else "l" for c in _cells(lines[i + 1]))
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out["main" if not out else f"t{len(out) + 1}"] = {"columns": cells, "align": align, "rows": rows}
        else:
            i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def write_results(out: Path, name: str, result: JSON, markdown: str, command: str | None = None,
                  config: JSONValue = None, markdown_tables: bool = True) -> Path:
    """A result for the CPU class it ran on (`result["machine"]`): everything as `<name>_<class>.json`
    with its provenance and its tables (`result["tables"]`, and the tables of `markdown` unless
    `markdown_tables` is false), the Markdown as `<name>_<class>.md`, also printed. Returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(name, result["machine"])
    head = {**provenance(command, config), "name": name}
    full = {**head, **{k: v for k, v in result.items() if k not in head or v is not None},
            "tables": {**(parse_tables(markdown) if markdown_tables else {}), **result.get("tables", {})}}
    check(full, f"{stem}.json")
    write_atomic(out / f"{stem}.json", [json.dumps(full, indent=2) + "\n"])
    write_atomic(out / f"{stem}.md", [markdown.rstrip("\n") + "\n"])
    print(markdown.rstrip("\n"))
    return out / f"{stem}.md"


def results_stem(stem: str, machine: JSON) -> str:
    """A result's file name for the CPU class it ran on: `train_throughput_avx2`."""
    return f"{stem}_{machine['cpu_class'].lower()}"


# --- reading and checking


def check(result: object, where: str) -> None:
    """Refuse a result file that lacks a required field or is of another schema, naming the field."""
    if not isinstance(result, dict):
        raise InstructuneError(f"{where}: a result file holds one JSON object; rerun the command that wrote it.")
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise InstructuneError(f"{where}: field{'s' * (len(missing) > 1)} {', '.join(missing)} missing; a result file "
                               f"carries {', '.join(REQUIRED)}. Rerun the command that wrote it.")
    if result["schema"] != SCHEMA:
        raise InstructuneError(f"{where}: field schema is {result['schema']!r}, this instructune reads schema "
                               f"{SCHEMA}; rerun the command that wrote it with this version.")
    machine = result["machine"]
    lacking = [k for k in MACHINE_FIELDS if not isinstance(machine, dict) or k not in machine]
    if lacking:
        raise InstructuneError(f"{where}: field machine lacks {', '.join(lacking)}; every number is published "
                               "with the CPU class and matmul speeds it was measured at.")
    for tname, t in result["tables"].items():
        width = len(t.get("columns", []))
        if not width or len(t.get("align", "")) != width:
            raise InstructuneError(f"{where}: field tables.{tname}: needs columns and one align letter per column.")
        for n, row in enumerate(t.get("rows", [])):
            if len(row) != width:
                raise InstructuneError(f"{where}: field tables.{tname}.rows[{n}] has {len(row)} cells for "
                                       f"{width} columns.")


def load(path: Path, where: str | None = None, shown: str | None = None) -> JSON:
    """A result file, checked; `where` (a docs file and line) prefixes every error, which names the file as
    `shown` (as the docs wrote it) or its path."""
    label = f"{where}: {shown or path}" if where else str(shown or path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InstructuneError(f"{label}: result file missing; run the command that writes it, or remove the "
                               "block that names it.") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InstructuneError(f"{label}: not a readable JSON result file ({e}); restore it from git or rerun "
                               "the command that wrote it.") from None
    check(result, label)
    return result


def render_table(result: JSON, name: str, where: str = "") -> str:
    """One table of a result file as Markdown."""
    if name not in result["tables"]:
        raise InstructuneError(f"{where}: field tables.{name} is not in the result file; its tables: "
                               f"{', '.join(result['tables']) or 'none'}.")
    t = result["tables"][name]
    bar = "|" + "|".join("---:" if a == "r" else "---" for a in t["align"]) + "|"
    lines = ["| " + " | ".join(t["columns"]) + " |", bar] + ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(lines) + "\n"


def machine_line(result: JSON) -> str:
    """`AVX2 (AMD EPYC, fp32 157 / bf16 20 GFLOP/s)`: the CPU class a result was measured on."""
    m = result["machine"]
    speeds = (f", fp32 {m['fp32_gflops']:.0f} / bf16 {m['bf16_gflops']:.0f} GFLOP/s"
              if isinstance(m.get("fp32_gflops"), (int, float)) and isinstance(m.get("bf16_gflops"), (int, float))
              else "")
    return f"{m['cpu_class']} ({m['cpu']}{speeds})"


# --- the docs


def doc_files(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCS for p in root.glob(pattern)})


def render_doc(text: str, root: Path, where: str) -> str:
    """`text` with every result block rendered from its file (paths relative to `root`)."""
    def block(m: re.Match) -> str:
        line = text.count("\n", 0, m.start()) + 1
        at = f"{where} line {line}"
        result = load(root / m["ref"], at, m["ref"])
        return m.group(1) + render_table(result, m["table"], f"{at}: {m['ref']}") + m.group(5)

    return BLOCK.sub(block, text)


def stale(root: Path) -> list[str]:
    """The docs files whose result blocks differ from what their files render."""
    out = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        if render_doc(text, root, str(path.relative_to(root))) != text:
            out.append(str(path.relative_to(root)))
    return out


def render(root: Path) -> list[str]:
    """Rewrite every docs file's result blocks from their files; the files changed."""
    changed = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        new = render_doc(text, root, str(path.relative_to(root)))
        if new != text:
            write_atomic(path, [new])
            changed.append(str(path.relative_to(root)))
    return changed


def blocks(root: Path) -> list[tuple[str, str, str]]:
    """(docs file, result file, table) of every block."""
    return [(str(p.relative_to(root)), m["ref"], m["table"]) for p in doc_files(root)
            for m in BLOCK.finditer(p.read_text(encoding="utf-8"))]
