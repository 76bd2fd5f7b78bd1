"""Bad input fuzzing: whatever a user file holds, loaders succeed or raise InstructuneError with a message.

Malformed CSV/JSONL/Parquet, wrong types, huge fields, odd Unicode, empty files, broken YAML
configs and templates go through `read_table`, `load_templates` (+ rendering), `build` and
`load_config`. No other exception type may escape, and a failed build leaves no split files.
Runs are derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructune.config import load_config, to_dict
from instructune.data.build import build
from instructune.data.sources import read_table
from instructune.data.templates import TASKS, load_templates
from instructune.errors import InstructuneError
from instructune.training.config import TrainConfig

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])
HUGE = "x" * 200_000  # over csv's default field limit (131,072 characters)
SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn's result, or None when it raised InstructuneError with a real message; anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except InstructuneError as e:
        assert len(str(e)) > 20, f"uninformative message: {e!r}"
        return None


# --- strategies -----------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\x00", "\ufeff", "\u202e", "\U0001f600", "e\u0301", "\U0001d518\U0001d52b",
                            "\r\n", "\u2028", '"', ",", "\t", "{{", "}}", "\\", "null", "1e999", "long " * 2000])
TEXT = st.one_of(st.text(max_size=30), ODD_TEXT)
NAMES = st.one_of(st.sampled_from(["text", "label", "id", "body", "", "tëxt", "a b"]), st.text(max_size=6))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
                    max_leaves=8)
LABELS = st.sampled_from(["pos", "neg", "other", "", 1, None])
GOOD_ROW = st.fixed_dictionaries({"text": TEXT, "label": LABELS}, optional={"id": st.integers(0, 3) | TEXT})

JSONL_LINE = st.one_of(
    GOOD_ROW.map(json.dumps), st.dictionaries(NAMES, JSON, max_size=4).map(json.dumps), JSON.map(json.dumps),
    st.text(max_size=40),
    st.sampled_from(['{"text": "\\ud800 half a pair", "label": "pos"}', "[" * 5000 + "]" * 5000,
                     '{"text": ' + "[" * 3000 + "]" * 3000 + "}", '{"text": 1e999, "label": NaN}', "", "   ",
                     '{"text": "a"', "\ufeff{}", '{"text": "ok", "label": "pos", "text": "dup key"}']),
)
JSONL = st.lists(JSONL_LINE, max_size=8).map("\n".join)


def as_csv(rows: list[list[str]], quoting: int, delimiter: str) -> str:
    buf = io.StringIO()
    try:
        csv.writer(buf, quoting=quoting, delimiter=delimiter, escapechar="\\").writerows(rows)
    except csv.Error:  # QUOTE_NONE cannot write some rows at all
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL, delimiter=delimiter).writerows(rows)
    return buf.getvalue()


CSV = st.one_of(
    st.builds(lambda rows, q, d: as_csv([["text", "label"], *rows], q, d),
              st.lists(st.lists(TEXT, min_size=1, max_size=3), max_size=6),
              st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE]), st.sampled_from([",", "\t"])),
    st.text(max_size=200),
    st.sampled_from(['text,label\n"unterminated,pos\n', "text,label\nx,y,z\n",
                     "text,label\n\x00,pos\n", "text,label\n", "", "\ufeff\ufefftext,label\na,pos\n",
                     "text,text\na,b\n", ",\n,\n"]),
)


def encode(text: str, tail: bytes) -> bytes:
    return text.encode("utf-8", "surrogatepass") + tail


def table_bytes(suffix: str) -> st.SearchStrategy[bytes]:
    """File contents for a suffix: mostly plausible text, some invalid UTF-8, some raw bytes."""
    text = {".jsonl": JSONL, ".json": JSONL, ".csv": CSV, ".tsv": CSV}.get(suffix, st.just(""))
    broken = st.sampled_from([b"", b"", b"", b"\xff\xfe", b"\xed\xa0\x80", b"\x80abc", b"\n\xc3"])
    return st.one_of(st.builds(encode, text, broken), st.binary(max_size=300))


@st.composite
def table_file(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"]))
    if suffix == ".parquet":
        return suffix, draw(st.one_of(st.binary(max_size=300), parquet_bytes()))
    return suffix, draw(table_bytes(suffix))


@st.composite
def parquet_bytes(draw: st.DrawFn) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = draw(st.lists(st.fixed_dictionaries({"text": st.text(max_size=20), "label": st.sampled_from(["pos", "neg"])}),
                         max_size=5))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("label", pa.string())])), buf)
    data = buf.getvalue()
    return data[: draw(st.integers(0, len(data)))]  # whole, or cut anywhere


JINJA = st.sampled_from([
    "{{ text }}", "{{ label }}", "{{", "}}", "{%", "%}", "{% if text %}", "{% endif %}", "{% for c in choices %}",
    "{% endfor %}", "{{ text|upper }}", "{{ text|truncate_words(2) }}", "{{ text|first_sentence }}",
    "{{ text|drop_first_sentence }}", "{{ choices.values()|or_list }}", "{{ answer }}", "{{ missing }}",
    "{{ 1/0 }}", "{{ text[0] }}", "{{ text.__class__ }}", "{{ '\\ud800' }}", "{{ range(200000)|list }}",
    "{{ " + "(" * 400 + "1" + ")" * 400 + " }}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "plain words ",
    "\n", "é\U0001f600", "{#", "#}", "{{ text ~ label }}", "{{ text * 2 }}", "{% raw %}", "{{ 2.0 ** 5000 }}",
])
BODY = st.lists(JINJA, max_size=5).map("".join)
TEMPLATE_VALUE = st.one_of(
    BODY, st.sampled_from([*TASKS, "nope", "newline", "eos"]), st.integers(), st.none(), st.booleans(),
    st.dictionaries(st.sampled_from(["pos", "neg", "1", ""]), TEXT | st.integers() | st.none(), max_size=3),
    st.lists(st.sampled_from(["accuracy", "f1", "rouge", "bleu", "nope"]) | st.integers() | st.lists(st.none()),
             max_size=3),
)
TEMPLATE = st.one_of(
    st.dictionaries(st.sampled_from(["id", "task", "prompt", "completion", "choices", "metrics", "stop",
                                     "label_field", "description", "pack", "bogus"]), TEMPLATE_VALUE, max_size=8),
    st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b", "a b", "é"]), "task": st.sampled_from(["classification", "generation"]),
         "prompt": BODY},
        optional={"completion": BODY, "stop": st.sampled_from(["newline", "eos", "never"]),
                  "choices": st.dictionaries(st.sampled_from(["pos", "neg", "1"]), TEXT, max_size=3),
                  "label_field": st.sampled_from(["label", "text", "nope"])}),
)
TEMPLATE_YAML = st.one_of(
    st.lists(TEMPLATE, max_size=3).map(yaml.safe_dump),
    st.fixed_dictionaries({"templates": st.lists(TEMPLATE, max_size=3)}, optional={"pack": JSON}).map(yaml.safe_dump),
    JSON.map(yaml.safe_dump), st.text(max_size=200),
    st.sampled_from(["[" * 1000, "a: [" * 1000, "- " * 1000 + "x", "{{ text }}", ": :", "\t- x", "&a [*a]",
                     "templates: !!python/object/apply:os.system ['true']", "- id: a\n  id: b\n", "---\n---\n"]),
)


# --- data files -----------------------------------------------------------------------------------

@FUZZ
@given(table_file())
def test_any_table_file_reads_or_fails_cleanly(case: tuple[str, bytes]) -> None:
    suffix, content = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(content)
        table = outcome(read_table, str(path))
    if table is not None:
        assert table.rows and all(isinstance(r, dict) for r in table.rows)
        assert len(table.ids) == len(set(table.ids)) == len(table.rows) == len(table.where)


def test_known_bad_inputs_name_file_and_line(tmp_path: Path) -> None:
    cases = {"deep.jsonl": ('{"text": "a", "label": "pos"}\n' + "[" * 5000 + "]" * 5000, "line 2: JSON nested"),
             "half.jsonl": ('{"text": "\\ud83d", "label": "pos"}\n', "line 1: holds an unpaired surrogate"),
             "huge.csv": (f"text,label\n{HUGE},pos\n", "line 2: not valid CSV (field larger than field limit"),
             "empty.csv": ("", "has no rows"), "empty.jsonl": ("\n\n", "has no rows"),
             "latin1.csv": ("text,label\ncaf\xe9,pos\n".encode("latin-1"), "line 2: not UTF-8 text")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        try:
            read_table(str(path))
        except InstructuneError as e:
            assert str(path) in str(e) and message in str(e), (name, str(e))
        else:
            raise AssertionError(f"{name} was accepted")


# --- templates ------------------------------------------------------------------------------------

@FUZZ
@given(TEMPLATE_YAML, st.lists(GOOD_ROW, min_size=1, max_size=3))
def test_any_template_file_loads_and_renders_or_fails_cleanly(text: str, rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "templates.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        templates = outcome(load_templates, str(path))
    for template in (templates or {}).values():
        for row in rows:
            rendered = outcome(template.render, row)
            if rendered is not None:
                prompt, completion = rendered
                assert isinstance(prompt, str) and completion and (prompt + completion).encode("utf-8")


def test_known_bad_templates_are_reported(tmp_path: Path) -> None:
    cases = {"[" * 1000: "nested too deeply",
             "- {id: a, task: generation, prompt: x, metrics: [[1]]}": "metrics [[1]] must be a list drawn from",
             "- {id: a, task: generation, prompt: '{{ " + "(" * 400 + "1" + ")" * 400 + " }}'}": "does not parse as Jinja"}
    for text, message in cases.items():
        (tmp_path / "t.yaml").write_text(text)
        try:
            load_templates(str(tmp_path / "t.yaml"))
        except InstructuneError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"accepted: {text[:40]}")


# --- build: all or nothing ------------------------------------------------------------------------

DATA_FILE = st.one_of(
    st.tuples(st.just(".jsonl"), st.lists(st.one_of(GOOD_ROW.map(json.dumps), JSONL_LINE), max_size=12)
              .map("\n".join).map(lambda t: t.encode("utf-8", "surrogatepass"))),
    st.tuples(st.just(".csv"), CSV.map(lambda t: t.encode("utf-8", "surrogatepass"))),
)


@FUZZ
@given(DATA_FILE, st.lists(TEMPLATE, min_size=1, max_size=2), st.booleans())
def test_build_writes_everything_or_nothing(data: tuple[str, bytes], templates: list[dict], skip_bad: bool) -> None:
    suffix, content = data
    with tempfile.TemporaryDirectory() as d:
        source, tpl, out = Path(d) / f"rows{suffix}", Path(d) / "t.yaml", Path(d) / "out"
        source.write_bytes(content)
        tpl.write_text(yaml.safe_dump(templates), encoding="utf-8", errors="surrogatepass")
        stats = outcome(build, str(source), [], out, template_file=str(tpl), skip_bad=skip_bad)
        written = sorted(p.name for p in out.glob("*")) if out.exists() else []
        if stats is None:
            assert not any(f in written for f in SPLIT_FILES), written
            return
        assert set(SPLIT_FILES) <= set(written) and "stats.json" in written
        records = [json.loads(line) for f in SPLIT_FILES for line in (out / f).read_text("utf-8").splitlines()]
        assert len(records) == sum(stats["records"].values()) > 0


# --- configs --------------------------------------------------------------------------------------

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                   TEXT, st.sampled_from(["1e-4", "fp32", "bf16", "lora", "full", "cosine", "runs/x", "~", "[]"]))
SECTIONS = {"data": ["source", "templates", "fractions", "max_length", "seed", "bogus"],
            "method": ["name", "r", "alpha", "targets", "dropout", "bogus"],
            "optim": ["lr", "betas", "warmup_steps", "schedule", "max_grad_norm", "bogus"]}
TOP = ["model", "output_dir", "batch_size", "grad_accum", "max_steps", "precision", "save_every", "keep",
       "regularizers", "replay_fraction", "skip_bad_batches", "eval_mode", "bogus", "lr"]
VALUE = st.one_of(SCALAR, st.lists(SCALAR | st.dictionaries(st.sampled_from(["source", "name", "lam", "x"]), SCALAR),
                                   max_size=3))
SECTION = st.one_of(*(st.tuples(st.just(k), st.dictionaries(st.sampled_from(v), VALUE, max_size=4) | VALUE)
                      for k, v in SECTIONS.items()))
CONFIG_DOC = st.lists(st.one_of(SECTION, st.tuples(st.sampled_from(TOP), VALUE)), max_size=6).map(dict)
CONFIG_TEXT = st.one_of(
    CONFIG_DOC.map(yaml.safe_dump), JSON.map(yaml.safe_dump), st.text(max_size=200),
    st.sampled_from(["[" * 1000, "data: {" * 1000, "a: b: c", "batch_size: 8\nbatch_size: 9", "\t\tx: 1", "---\n",
                     "optim: !!python/object/apply:os.system ['true']", "\ufeffmax_steps: 3", "&a [*a, *a]"]),
)
DOTTED = [*TOP, *(f"{k}.{f}" for k, v in SECTIONS.items() for f in v), "a..b", "", ".", "data.source.x", "=", "data."]
OVERRIDE = st.one_of(st.text(max_size=20), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED), st.one_of(
    st.text(max_size=10), st.sampled_from(["[", "{a: 1}", "1e-4", ".nan", "[" * 1000, "null", "~", "[q, v]"]))))


@FUZZ
@given(CONFIG_TEXT, st.lists(OVERRIDE, max_size=3))
def test_any_config_loads_or_fails_cleanly(text: str, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        cfg = outcome(load_config, TrainConfig, path, overrides)
    if cfg is not None:
        assert isinstance(cfg, TrainConfig) and cfg.problems() == []
        yaml.safe_load(yaml.safe_dump(to_dict(cfg)))  # what a run writes to config.yaml, and reads on --resume


def test_a_bad_nested_section_is_reported_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("method: [1]\noptim: fast\n")
    try:
        load_config(TrainConfig, path)
    except InstructuneError as e:
        assert "method: expected a mapping of fields, got [1]" in str(e) and "optim: expected a mapping" in str(e)
    else:
        raise AssertionError("accepted")
