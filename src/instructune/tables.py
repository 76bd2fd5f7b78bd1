"""Tables for the command line that never cut an identifier.

In a terminal a table is drawn with rich, identifier columns never wrapped or shortened (the other
columns wrap instead); piped or redirected, it is plain text: a title line, then one line per row
with the columns aligned by spaces, every value whole, so `grep`, `cut` and `awk` work on it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def show(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], ids: Sequence[str] = (),
         file: TextIO | None = None) -> None:
    """Print `rows` under `columns`; the columns named in `ids` (names a user copies) stay whole."""
    out = file or sys.stdout
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not out.isatty():
        print(plain(title, columns, cells), file=out)
        return
    table = Table(title=escape(title), title_justify="left")
    for col in columns:
        whole = col in ids
        table.add_column(col, no_wrap=whole, overflow="fold",
                         min_width=max([len(col), *(len(r[columns.index(col)]) for r in cells)]) if whole else None)
    for row in cells:
        table.add_row(*map(escape, row))
    Console(file=out).print(table)


def plain(title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """The table as aligned plain text (the last column is not padded)."""
    grid = [list(columns), *[list(r) for r in cells]]
    widths = [max(len(row[i].replace("\n", " ")) for row in grid) for i in range(len(columns))]
    lines = [title] if title else []
    for row in grid:
        values = [v.replace("\n", " ") for v in row]
        lines.append("  ".join(v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)) + "  " + values[-1]
                     if len(values) > 1 else values[0])
    return "\n".join(line.rstrip() for line in lines)
