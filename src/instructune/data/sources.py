"""Where rows come from: a data pack, a CSV/JSONL/Parquet file, or a `datasets` hub name.

Every row keeps its place in the source (`reviews.jsonl line 17`, `table.parquet row 3`) so an
error about a row says where to fix it. Every row gets an `id`: its own `id` column when it has
one (duplicates are an error), else a hash of its content. Ids are kept beside the rows, so a
row holds only the source's own fields.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from instructune import hub
from instructune.data import packs
from instructune.errors import InstructuneError

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass
class Table:
    """Rows plus what error messages and cache keys need to know about them."""

    rows: list[dict]
    ids: list[str]
    """Per row: a stable id (the row's own `id` field, else a hash of its content)."""
    where: list[str]
    """Per row: where it is in the source, e.g. 'data/reviews.jsonl line 17'."""
    identity: str
    """Changes whenever the content changes (a sha256 or a pack's rows hash): part of dataset cache keys."""
    text_field: str | None = None
    """The main input text, when the source says (packs do)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows a pack left out when it was pulled, by reason."""


def load_rows(source: str) -> list[dict]:
    """Rows of a pack name (pulled if needed), a CSV/JSONL/Parquet path, or a hub name `owner/name[:split]`."""
    return read_table(source).rows


def read_table(source: str) -> Table:
    """Like `load_rows`, keeping each row's location and the source's identity."""
    if source in packs.PACKS:
        rows = packs.pack_rows(source)
        info = packs.pack_info(source) or {}
        return Table(rows, [r["id"] for r in rows], [f"pack {source} row id {r['id']}" for r in rows],
                     f"pack:{source}:{info['rows_sha256']}", packs.PACKS[source].text_field, info.get("dropped", {}))
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path)
    if Path(source.partition(":")[0]).expanduser().is_dir():
        return read_hub(source)  # a local dataset folder: `datasets` reads its data files, no hub involved
    if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")):
        raise InstructuneError(f"{source}: no such file. Give a CSV, JSONL or Parquet file, or a data pack "
                               f"({', '.join(packs.PACKS)}).")
    if "/" not in source:
        packs.get_pack(source)  # not owner/name, so not a hub dataset: an unknown pack, and the error lists them
    return read_hub(source)


def read_file(path: Path) -> Table:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows, where = read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        rows, where = read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows, where = read_parquet(path)
    else:
        raise InstructuneError(f"{path}: unknown file type '{suffix}'; use .csv, .tsv, .jsonl or .parquet.")
    if not rows:
        raise InstructuneError(f"{path} has no rows; put at least one example in it (for CSV: a header line, then "
                               "one line per example).")
    return Table(rows, row_ids(rows, where), where, f"file:{path.name}:{hub.sha256(path)}")


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """One JSON object per line; blank lines are allowed, anything else that is not an object is an error."""
    rows, where = [], []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InstructuneError(f"{path} line {n}: not valid JSON ({e.msg}, column {e.colno}); each line must "
                                       'be one JSON object like {"text": "...", "label": "..."}') from None
            except RecursionError:
                raise InstructuneError(f"{path} line {n}: JSON nested too deeply to read; give each example a few "
                                       "named fields of text or numbers.") from None
            if not isinstance(row, dict):
                raise InstructuneError(f"{path} line {n}: expected a JSON object with named fields, got "
                                       f"{type(row).__name__}")
            if "\\u" in line:  # an escape may be half a surrogate pair: text no UTF-8 file can hold
                _check_unicode(row, f"{path} line {n}")
            rows.append(row)
            where.append(f"{path} line {n}")
    return rows, where


def _check_unicode(row: dict, where: str) -> None:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise InstructuneError(f"{where}: holds an unpaired surrogate escape ({e.object[e.start:e.end]!a}), which is "
                               "not a character; fix the text (a \\ud83d-style escape needs its pair).") from None


def read_csv(path: Path, delimiter: str = ",") -> tuple[list[dict], list[str]]:
    """A header line, then one record per line (quoted fields may span lines)."""
    rows, where = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(_lines(f, path), delimiter=delimiter)
        start = 2
        try:
            for row in reader:
                if None in row or None in row.values():  # DictReader's marks for too many / too few fields
                    header = reader.fieldnames or []
                    count = len(header) + len(row[None]) if None in row else sum(v is not None for v in row.values())
                    raise InstructuneError(
                        f"{path} line {start}: {count} fields, but the header has {len(header)} "
                        f"({', '.join(header)}); quote values that contain the delimiter")
                rows.append(row)
                where.append(f"{path} line {start}")
                start = reader.line_num + 1
        except csv.Error as e:  # `start`: where the record that fails begins (line_num may not have moved yet)
            raise InstructuneError(f"{path} line {start}: not valid CSV ({e}); check that record's quotes (a field "
                                   f"over {csv.field_size_limit():,} characters needs JSONL or Parquet).") from None
    return rows, where


def _lines(f, path: Path):
    """Yield lines, turning a decoding failure into an error that names the file and line."""
    try:
        yield from f
    except UnicodeDecodeError as e:  # text files decode in 8 KiB chunks: find the line in the bytes
        raise InstructuneError(f"{path} line {_undecodable_line(path)}: not UTF-8 text ({e.reason}); save the file "
                               "as UTF-8.") from None


def _undecodable_line(path: Path) -> int:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):  # "\n" never occurs inside a UTF-8 sequence
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 1


def read_parquet(path: Path) -> tuple[list[dict], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise InstructuneError(f"{path}: not a readable Parquet file ({e}).") from None
    return rows, [f"{path} row {i + 1}" for i in range(len(rows))]


def read_hub(name: str) -> Table:
    """`owner/name[:split]` (or a local dataset folder) through `datasets.load_dataset`."""
    dataset, _, split = name.partition(":")
    split = split or "train"
    if not Path(dataset).expanduser().is_dir() and not hub.model_hub_reachable():  # fail fast, not after timeouts
        raise InstructuneError(
            f"'{name}' is not a data pack or a file, so it was taken as a hub dataset, but the hub is unreachable "
            f"from this machine (or HF_HUB_OFFLINE is set). Use a data pack ({', '.join(packs.PACKS)}) or a local "
            "CSV/JSONL/Parquet file (a dataset you already have: `ds.to_json('rows.jsonl')`).")
    import datasets

    folder = Path(dataset).expanduser()
    try:
        if folder.is_dir():  # its Arrow cache goes to our cache root, not the shared hub cache
            ds = datasets.load_dataset(str(folder), split=split, cache_dir=str(hub.cache_root() / "hf-datasets"))
        else:
            ds = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError ...)
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise InstructuneError(f"could not load dataset '{dataset}' split '{split}' with datasets.load_dataset: "
                               f"{first}. Check the name (owner/name) and the split (name:split).") from None
    rows = ds.to_list()
    if not rows:
        raise InstructuneError(f"hub dataset '{dataset}' split '{split}' has no rows; pick another split.")
    where = [f"{name} row {i + 1}" for i in range(len(rows))]
    return Table(rows, row_ids(rows, where), where, f"hub:{name}:{getattr(ds, '_fingerprint', '')}")


def row_ids(rows: list[dict], where: list[str]) -> list[str]:
    """Each row's own `id` (as text; duplicates are an error), else a hash of its content."""
    if all("id" in r for r in rows):
        first: dict[str, str] = {}
        for r, w in zip(rows, where, strict=True):
            rid = str(r["id"])
            if rid in first:
                raise InstructuneError(f"{w}: id {rid!r} was already used at {first[rid]}; ids must be unique (or "
                                       "drop the id column to have ids made from the content).")
            first[rid] = w
        return list(first)
    seen: Counter = Counter()
    ids = []
    for r in rows:
        content = json.dumps(r, sort_keys=True, ensure_ascii=False, default=str)
        seen[content] += 1  # identical rows: the occurrence keeps ids unique
        ids.append(hashlib.sha1(f"{content}\0{seen[content]}".encode()).hexdigest()[:12])
    return ids
