"""Build an instruction dataset: rows -> split -> templates -> train/validation/test.jsonl + stats.json.

    folder = prepare("rotten-tomatoes", ["sentiment", "fresh-rotten"], seed=1)
    train = read_split(folder, "train")   # [{id, task, template, prompt, completion, label}, ...]

Every row is rendered with every template first, so a bad row is reported (file, line, field)
before anything is written; `skip_bad=True` leaves such rows out and counts them in stats.json.
Rows are split before templates are applied (see `splits`). Files are written atomically and
byte-identically for the same inputs; `prepare` caches the folder under a hash of all inputs,
template texts included, in `$INSTRUCTUNE_HOME/datasets/<hash>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import track

from instructune import hub
from instructune.data import chat, formats
from instructune.data.packs import PACKS, get_pack
from instructune.data.sources import Table, read_table
from instructune.data.splits import DEFAULT_FRACTIONS, SPLITS, assign_splits, check_fractions, normalise
from instructune.data.templates import (
    CONTEXT_NAMES,
    RowError,
    Template,
    check_fields,
    load_templates,
    variables,
)
from instructune.errors import InstructuneError
from instructune.files import write_atomic
from instructune.paths import refuse_overwrite
from instructune.types import Tokenizer

FORMAT = 1
"""Bump when the files written change shape: cached dataset folders of another format are rebuilt."""
MAX_LISTED = 10


@dataclass
class BuildConfig:
    """`instructune data build --config data.yaml`: what to build (flags override the file)."""

    pack: str | None = None
    """A data pack name (`instructune data list`); or give `file`."""
    file: str | None = None
    """A CSV, JSONL or Parquet file, or a hub dataset `owner/name[:split]`; or give `pack`."""
    templates: list[str] = field(default_factory=list)
    """Template ids to apply to every row (default: all templates of the pack or templates file)."""
    templates_file: str | None = None
    """A YAML file of templates (needed for `file`; optional for a pack, replacing its own)."""
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    """train, validation, test fractions of the rows; they sum to 1."""
    seed: int = 0
    """Seeds the split and the order of records."""
    out: str | None = None
    """Output folder; default: a cached folder keyed by a hash of every input."""
    tokenizer: str | None = None
    """A model (pack name, folder or hub id) whose tokenizer measures token lengths in stats.json."""
    skip_bad: bool = False
    """Leave rows that cannot be rendered out (counted in stats.json) instead of stopping."""
    limit: int | None = None
    """Use at most this many rows (a seeded sample, kept in source order)."""
    input_format: str = "auto"
    """How rows become examples: template, alpaca, messages, sharegpt, text; auto = templates when any are
    named or the source is a pack, else recognised by the rows' fields."""
    format: str | None = None
    """Also write the records as alpaca or messages JSONL (`<split>.<format>.jsonl` in `out`)."""

    def problems(self) -> list[str]:
        out = []
        if (self.pack is None) == (self.file is None):
            out.append("give exactly one of `pack` (a data pack) or `file` (a CSV/JSONL/Parquet file or hub name)")
        if self.file and not self.templates_file and self.input_format == "template":
            out.append("`file` needs `templates_file`: a YAML file of templates for its fields")
        if self.input_format not in formats.FORMATS:
            out.append(f"input_format {self.input_format!r} is not one of {', '.join(formats.FORMATS)}")
        if self.format is not None and self.format not in formats.EXPORTS:
            out.append(f"format {self.format!r} is not one of {', '.join(formats.EXPORTS)} (the export formats)")
        if self.limit is not None and self.limit < 1:
            out.append(f"limit must be at least 1, got {self.limit}")
        return out


def select_templates(source: str, template_ids: Sequence[str], template_file: str | None = None) -> list[Template]:
    """The named templates (all when none are named) from the templates file, or the pack's own."""
    if template_file is None and source not in PACKS:
        if "/" not in source and not Path(source).exists():
            get_pack(source)  # a misspelt pack: the error lists the packs
        raise InstructuneError(f"{source} is not a data pack, so it has no built-in templates; give a templates "
                               "file (--template-file FILE.yaml, see src/instructune/templates/ for examples).")
    origin = template_file or source
    available = load_templates(origin)
    unknown = [t for t in template_ids if t not in available]
    if unknown:
        raise InstructuneError(f"template{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} not in "
                               f"{origin}; templates there: {', '.join(available)}.")
    return [available[t] for t in dict.fromkeys(template_ids or available)]


def choose_templates(table: Table, source: str, template_ids: Sequence[str], template_file: str | None,
                     fmt: str = "auto") -> list[Template]:
    """The templates for `fmt`: a data format's own pseudo-template, or the named templates. `auto` means
    templates when any are named (or the source is a pack), else the format the rows' fields show."""
    if fmt not in formats.FORMATS:
        raise InstructuneError(f"unknown data format {fmt!r}; formats are {', '.join(formats.FORMATS)}.")
    if fmt == "auto":
        pack = PACKS[source].format if source in PACKS else None
        if template_ids or template_file or pack == "template":
            fmt = "template"
        else:
            fmt = pack or formats.recognise(table.rows, source)[0]
    if fmt == "template":
        return select_templates(source, template_ids, template_file)
    if template_ids or template_file:
        raise InstructuneError(f"data format {fmt!r} reads {source}'s records as they are, so templates do not "
                               "apply; drop `templates`/`template_file`, or set `format: template` to use them.")
    return [formats.template(fmt)]


def prepare(source: str, template_ids: list[str], seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
            template_file: str | None = None, tokenizer: Tokenizer | str | None = None, skip_bad: bool = False,
            limit: int | None = None, fmt: str = "auto") -> Path:
    """Build (or reuse) the dataset folder for these inputs in `$INSTRUCTUNE_HOME/datasets/<hash>/`."""
    table = read_table(source)
    templates = choose_templates(table, source, template_ids, template_file, fmt)
    key = {"format": FORMAT, "source": table.identity, "templates": [t.to_dict() for t in templates],
           "seed": seed, "fractions": list(check_fractions(fractions)), "tokenizer": _tokenizer_name(tokenizer),
           "skip_bad": skip_bad, "limit": limit}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = hub.cache_root() / "datasets" / digest
    if (folder / "stats.json").exists():
        return folder
    staging = folder.with_name(f"{digest}.staging-{os.getpid()}")
    try:
        build_table(table, templates, staging, seed=seed, fractions=fractions, tokenizer=tokenizer,
                    skip_bad=skip_bad, limit=limit, source=source)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, folder)  # the folder appears whole or not at all
    except OSError:  # another process finished the same folder first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build(source: str, template_ids: Sequence[str], out: Path, seed: int = 0,
          fractions: Sequence[float] = DEFAULT_FRACTIONS, template_file: str | None = None,
          tokenizer: Tokenizer | str | None = None, skip_bad: bool = False, limit: int | None = None,
          progress: bool = False, fmt: str = "auto") -> dict:
    """Write train/validation/test.jsonl, templates.json and stats.json into `out`; returns the stats."""
    inputs = {"--file": None if source in PACKS else source, "--template-file": template_file}
    refuse_overwrite("--out", out, outputs(Path(out)), inputs, "give --out a folder of its own")
    table = read_table(source)
    templates = choose_templates(table, source, template_ids, template_file, fmt)
    # a new (or empty) folder is built beside `out` and renamed: whole or absent, whatever stops the build
    # (SIGTERM, an error); an existing build has its files replaced one by one, stats.json last
    out = Path(out)
    fresh = not (out.is_dir() and any(out.iterdir()))
    target = out.with_name(f".{out.name}.staging-{os.getpid()}") if fresh else out
    try:
        stats = build_table(table, templates, target, seed=seed, fractions=fractions,
                            tokenizer=tokenizer, skip_bad=skip_bad, limit=limit, progress=progress, source=source)
        if fresh:
            os.replace(target, out)
    finally:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
    return stats


def outputs(out: Path, fmt: str | None = None) -> list[Path]:
    """What a build writes in `out` (with `fmt`: what an export in that format writes), the folder first."""
    if fmt:
        return [out, *(out / f"{split}.{fmt}.jsonl" for split in SPLITS)]
    return [out, *(out / f"{split}.jsonl" for split in SPLITS), out / "templates.json", out / "stats.json"]


def export(folder: Path, fmt: str, out: Path) -> dict[str, int]:
    """Write a built dataset's records as `<split>.<fmt>.jsonl` in an export format (alpaca, messages)."""
    if fmt not in formats.EXPORTS:
        raise InstructuneError(f"cannot export as {fmt!r}; export formats are {', '.join(formats.EXPORTS)}.")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        records = read_split(folder, split)
        write_atomic(out / f"{split}.{fmt}.jsonl",
                     (json.dumps(formats.export(r, fmt), ensure_ascii=False) + "\n" for r in records))
        counts[split] = len(records)
    return counts


def build_table(table: Table, templates: list[Template], out: Path, seed: int = 0,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, tokenizer: Tokenizer | str | None = None,
                skip_bad: bool = False, limit: int | None = None, progress: bool = False, source: str = "") -> dict:
    """The recipe: sample, render every row (errors first), split rows, write records and stats."""
    fractions = check_fractions(fractions)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer  # fail before the long work
    rows, ids, where = table.rows, table.ids, table.where
    if limit is not None and limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows, ids, where = [rows[i] for i in keep], [ids[i] for i in keep], [where[i] for i in keep]
    check_fields(templates, rows, source or "the data")  # a field no row has: one error, not one per row
    rendered, bad = render_rows(rows, ids, where, templates, skip_bad, progress)
    good = [i for i in range(len(rows)) if rendered[i] is not None]
    if not good:
        raise InstructuneError(f"no row of {source} could be rendered ({sum(bad.values())} bad); fix the rows or the "
                               "templates.")
    text_field = table.text_field or infer_text_field(templates, rows)
    classifier = next((t for t in templates if t.task == "classification"), None)
    labels = [classifier.label_of(rows[i]) if classifier else None for i in good]
    if templates[0].format != "template":  # a whole conversation (or text) is what repeats
        keys = [f"{rendered[i][0]['prompt']}\n\n{rendered[i][0]['completion']}" for i in good]
    else:
        keys = [str(rows[i].get(text_field, ids[i])) if text_field else ids[i] for i in good]
    split_of = assign_splits(keys, labels, fractions, seed)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    row_labels: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for i, split, label in zip(good, split_of, labels, strict=True):
        records[split].extend(rendered[i])  # type: ignore[arg-type]
        if label is not None:
            row_labels[split][label] += 1
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        random.Random(f"{seed}:{split}").shuffle(records[split])
        write_atomic(out / f"{split}.jsonl", (json.dumps(r, ensure_ascii=False) + "\n" for r in records[split]))
    write_atomic(out / "templates.json", [json.dumps({t.id: t.to_dict() for t in templates}, indent=2) + "\n"])
    stats = {
        "format": FORMAT, "source": source, "data_format": templates[0].format,
        "templates": [t.id for t in templates], "seed": seed,
        "fractions": list(fractions), "limit": limit, "rows_in": len(rows), "rows_used": len(good),
        "records": {s: len(records[s]) for s in SPLITS},
        "rows": {s: sum(1 for x in split_of if x == s) for s in SPLITS},
        "labels": {s: dict(sorted(c.items())) for s, c in row_labels.items()} if classifier else None,
        "stratified_by": f"{classifier.id}.{classifier.label_field}" if classifier else None,
        "duplicates": duplicate_stats(keys, text_field),
        "dropped": {"by_pack": table.dropped, "bad_rows": dict(sorted(bad.items())),
                    "bad_rows_total": sum(bad.values())},
        "tokens": token_stats(tok, records) if tok is not None else None,
        "special_tokens": special_tokens(records, tok),
    }
    if tok is not None:
        stats["tokenizer"] = _tokenizer_name(tokenizer)
    write_atomic(out / "stats.json", [json.dumps(stats, indent=2, ensure_ascii=False) + "\n"])  # last: marks done
    return stats


def render_rows(rows: list[dict], ids: list[str], where: list[str], templates: list[Template], skip_bad: bool,
                progress: bool = False) -> tuple[list[list[dict] | None], Counter]:
    """Each row's records under every template, or None for a bad row; raises listing bad rows unless skip_bad."""
    rendered: list[list[dict] | None] = []
    bad: Counter = Counter()
    messages: list[str] = []
    for row, rid, place in _track(list(zip(rows, ids, where, strict=True)), progress, "rendering rows"):
        try:
            rendered.append([record(row, rid, t) for t in templates])
        except RowError as e:
            rendered.append(None)
            bad[e.kind] += 1
            if len(messages) < MAX_LISTED:
                messages.append(f"{place}: {e}")
    if bad and not skip_bad:
        total = sum(bad.values())
        shown = "\n".join(f"  - {m}" for m in messages) + ("\n  - ..." if total > len(messages) else "")
        it, them = ("them", "they are") if total > 1 else ("it", "it is")
        raise InstructuneError(f"{total} row{'s' * (total > 1)} cannot be rendered; fix {it}, or pass --skip-bad "
                               f"to leave {it} out ({them} counted in stats.json):\n{shown}")
    return rendered, bad


def record(row: dict, row_id: str, template: Template) -> dict:
    """One JSONL record; choices stay in the template (templates.json), not in every record."""
    if template.format != "template":
        return formats.record(row, row_id, template.format)
    prompt, completion = template.render(row)
    out = {"id": f"{row_id}/{template.id}", "task": template.task, "template": template.id,
           "prompt": prompt, "completion": completion}
    if template.task == "classification":
        out["label"] = template.label_of(row)
    return out


def infer_text_field(templates: list[Template], rows: list[dict]) -> str | None:
    """The main text of a user file: the longest (on average) string field the templates use, labels aside."""
    labels = {t.label_field for t in templates if t.task == "classification"}
    used = set().union(*(variables(t.prompt) | variables(t.completion) for t in templates)) - CONTEXT_NAMES - labels
    sample = rows[:1000]
    lengths = {f: sum(len(r[f]) for r in sample if isinstance(r.get(f), str)) for f in sorted(used)}
    return max(lengths, key=lambda f: (lengths[f], f)) if lengths and max(lengths.values()) else None


def duplicate_stats(keys: list[str], text_field: str | None) -> dict:

    sizes = Counter(normalise(k) for k in keys)
    groups = [n for n in sizes.values() if n > 1]
    return {"field": text_field, "groups": len(groups), "rows_in_groups": sum(groups)}


def load_tokenizer(name: str) -> Tokenizer:
    """Just the tokenizer of a model pack, local folder or hub id."""
    from transformers import AutoTokenizer

    from instructune.models import resolve_model

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except OSError as e:
        raise InstructuneError(f"could not load the tokenizer of '{name}' ({str(e).splitlines()[0][:200]}); use a "
                               "model pack (`instructune models list`) or a local model folder.") from None


def token_stats(tok: Tokenizer, records: dict[str, list[dict]]) -> dict:
    """Token-length percentiles of prompts, completions and both, per split (raw text, no chat template)."""
    out = {}
    for split, recs in records.items():
        if not recs:
            continue
        lengths = {part: np.array([len(ids) for ids in tok([r[part] for r in recs], add_special_tokens=False)
                                   ["input_ids"]]) for part in ("prompt", "completion")}
        lengths["total"] = lengths["prompt"] + lengths["completion"]
        out[split] = {part: {f"p{q}": int(np.percentile(v, q, method="nearest")) for q in (50, 90, 95, 99)}
                      | {"max": int(v.max())} for part, v in lengths.items()}
    return out


def special_tokens(records: dict[str, list[dict]], tok: Tokenizer | None = None) -> dict[str, dict[str, int]]:
    """Special-token strings in the content of each split's file (the tokenizer's own, else any spelt
    `<|...|>`), counted: training reads them as plain text (`formats.special_note` says so)."""
    tokens = chat.control_tokens(tok) if tok is not None else None
    out = {}
    for split, recs in records.items():
        found = formats.special_strings((text for r in recs for _, text in formats.contents(r)), tokens)
        if found:
            out[f"{split}.jsonl"] = dict(sorted(found.items()))
    return out


def read_split(folder: Path, split: str) -> list[dict]:
    """The records of one split of a built dataset folder."""
    if split not in SPLITS:
        raise InstructuneError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}.")
    path = Path(folder) / f"{split}.jsonl"
    if not path.exists():
        raise InstructuneError(f"{path} does not exist: {folder} is not a built dataset; run `instructune data "
                               "build` first.")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def stats(folder: Path) -> dict:
    """A built dataset's stats.json (what was built, from what, and what was dropped)."""
    return json.loads((Path(folder) / "stats.json").read_text(encoding="utf-8"))


def dataset_templates(folder: Path) -> dict[str, Template]:
    """The templates a dataset folder was built with (choices, metrics and stop live here)."""
    data = json.loads((Path(folder) / "templates.json").read_text(encoding="utf-8"))
    return {tid: Template(**t) for tid, t in data.items()}


def _tokenizer_name(tokenizer: Tokenizer | str | None) -> str | None:
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _track(items: list, enabled: bool, description: str) -> Iterable:
    if not enabled:
        return items

    return track(items, description=description, transient=True)
