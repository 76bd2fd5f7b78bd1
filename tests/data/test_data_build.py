"""Building a dataset from hand-written files: files, stats, determinism, leakage, caching, bad rows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instructune.data.build import build, dataset_templates, prepare, read_split
from instructune.data.splits import SPLITS, normalise
from instructune.errors import InstructuneError

TEMPLATES = """\
templates:
  - id: classify-1
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: |-
      Is this review positive or negative?

      {{ review_body }}

      Answer with one word: {{ choices.values() | or_list }}.
  - id: write
    task: generation
    stop: eos
    prompt: Write a {{ "positive" if label == "pos" else "negative" }} review.
    completion: "{{ review_body }}"
"""


def reviews(tmp_path: Path, n: int = 400, extra: list[dict] | None = None) -> tuple[str, str]:
    """A JSONL of n reviews (70% pos) with some case/punctuation duplicates, and the templates file."""
    rows = [{"review_body": f"Review {i}: {'great' if i % 10 < 7 else 'awful'} film", "label":
             "pos" if i % 10 < 7 else "neg"} for i in range(n)]
    rows += [{"review_body": f"REVIEW {i} -- {'great' if i % 10 < 7 else 'awful'} FILM!", "label":
              "pos" if i % 10 < 7 else "neg"} for i in range(0, n, 7)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + (extra or [])))
    templates = tmp_path / "templates.yaml"
    templates.write_text(TEMPLATES)
    return str(data), str(templates)


def test_build_writes_splits_and_stats(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path)
    stats = build(data, ["classify-1", "write"], tmp_path / "out", seed=1, template_file=templates)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "templates.json", "test.jsonl", "train.jsonl",
                                                     "validation.jsonl"]
    train = read_split(out, "train")
    assert set(train[0]) <= {"id", "task", "template", "prompt", "completion", "label"}
    classify = [r for r in train if r["template"] == "classify-1"]
    assert {r["completion"] for r in classify} == {"positive", "negative"}
    assert all(r["label"] in ("pos", "neg") and "choices" not in r for r in classify)
    assert all("label" not in r for r in train if r["template"] == "write")
    rows_in = 400 + len(range(0, 400, 7))
    assert stats["rows_in"] == rows_in and sum(stats["rows"].values()) == rows_in
    assert stats["records"] == {s: 2 * stats["rows"][s] for s in SPLITS}
    assert stats["duplicates"] == {"field": "review_body", "groups": 58, "rows_in_groups": 116}
    assert dataset_templates(out)["classify-1"].choices == {"pos": "positive", "neg": "negative"}


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path)
    build(data, ["classify-1", "write"], tmp_path / "a", seed=3, template_file=templates)
    build(data, ["classify-1", "write"], tmp_path / "b", seed=3, template_file=templates)
    build(data, ["classify-1", "write"], tmp_path / "c", seed=4, template_file=templates)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json", "templates.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "c" / "test.jsonl").read_bytes()


def test_no_row_or_normalised_text_in_two_splits(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path)
    build(data, ["classify-1", "write"], tmp_path / "out", seed=0, template_file=templates)
    row_split: dict[str, str] = {}
    text_split: dict[str, str] = {}
    for split in SPLITS:
        for r in read_split(tmp_path / "out", split):
            assert row_split.setdefault(r["id"].split("/")[0], split) == split
            if r["template"] == "classify-1":
                assert text_split.setdefault(normalise(r["prompt"]), split) == split


def test_label_proportions_hold(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path, n=2000)
    stats = build(data, ["classify-1"], tmp_path / "out", fractions=(0.6, 0.2, 0.2), template_file=templates)
    whole = Counter()
    for counts in stats["labels"].values():
        whole.update(counts)
    for split, counts in stats["labels"].items():
        assert sum(counts.values()) >= 200
        assert abs(counts["pos"] / sum(counts.values()) - whole["pos"] / sum(whole.values())) <= 0.02, split


def test_missing_field_error_names_file_line_field(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path, n=20, extra=[{"text": "Oops", "label": "pos"}])
    with pytest.raises(InstructuneError) as e:
        build(data, ["classify-1"], tmp_path / "out", template_file=templates)
    assert (f"{data} line 24: field 'review_body' used by template 'classify-1' is missing; fields present: "
            "text, label") in str(e.value)
    assert "--skip-bad" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_label_outside_choices_error(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path, n=20, extra=[{"review_body": "Meh", "label": "neutral"}])
    with pytest.raises(InstructuneError, match=r"line 24: label 'neutral' \(field 'label'\) is not one of the answer "
                                               r"choices of template 'classify-1'"):
        build(data, ["classify-1"], tmp_path / "out", template_file=templates)


def test_skip_bad_counts_rows_in_stats(tmp_path: Path) -> None:
    extra = [{"text": "Oops", "label": "pos"}, {"review_body": "Meh", "label": "neutral"},
             {"review_body": "Meh 2", "label": "neutral"}]
    data, templates = reviews(tmp_path, n=20, extra=extra)
    stats = build(data, ["classify-1"], tmp_path / "out", template_file=templates, skip_bad=True)
    assert stats["rows_used"] == stats["rows_in"] - 3 == 23
    assert stats["dropped"]["bad_rows"] == {"label outside the choices (template classify-1)": 2,
                                            "missing field 'review_body' (template classify-1)": 1}
    assert stats["dropped"]["bad_rows_total"] == 3


def test_malformed_line_and_empty_input_through_build(tmp_path: Path) -> None:
    _, templates = reviews(tmp_path, n=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review_body": "a", "label": "pos"}\n{"review_body": "b", "label": "pos"\n')
    with pytest.raises(InstructuneError, match=r"bad.jsonl line 2: not valid JSON"):
        build(str(bad), ["classify-1"], tmp_path / "out", template_file=templates)
    empty = tmp_path / "empty.csv"
    empty.write_text("review_body,label\n")
    with pytest.raises(InstructuneError, match="empty.csv has no rows"):
        build(str(empty), ["classify-1"], tmp_path / "out", template_file=templates)


def test_unknown_template_id_and_missing_templates_file(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path, n=5)
    with pytest.raises(InstructuneError, match="'classify-2' not in .*templates there: classify-1, write"):
        build(data, ["classify-2"], tmp_path / "out", template_file=templates)
    with pytest.raises(InstructuneError, match="not a data pack, so it has no built-in templates"):
        build(data, ["classify-1"], tmp_path / "out")


def test_csv_source_and_limit(tmp_path: Path) -> None:
    _, templates = reviews(tmp_path, n=5)
    path = tmp_path / "r.csv"
    path.write_text("review_body,label\n" + "".join(f"Film {i} was fine,{'pos' if i % 2 else 'neg'}\n"
                                                    for i in range(50)))
    stats = build(str(path), [], tmp_path / "out", template_file=templates, limit=20, fractions=(0.5, 0.5, 0.0))
    assert stats["templates"] == ["classify-1", "write"]  # none named: all of them
    assert stats["rows_used"] == 20 and stats["rows"]["test"] == 0
    assert (tmp_path / "out" / "test.jsonl").read_text() == ""


def test_prepare_caches_by_inputs(tmp_path: Path) -> None:
    data, templates = reviews(tmp_path, n=50)
    first = prepare(data, ["classify-1"], seed=0, template_file=templates)
    stamp = (first / "train.jsonl").stat().st_mtime_ns
    assert prepare(data, ["classify-1"], seed=0, template_file=templates) == first
    assert (first / "train.jsonl").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert prepare(data, ["classify-1"], seed=1, template_file=templates) != first
    Path(templates).write_text(TEMPLATES.replace("Is this review", "Is this film review"))
    changed = prepare(data, ["classify-1"], seed=0, template_file=templates)
    assert changed != first and "film review" in read_split(changed, "train")[0]["prompt"]


def test_token_length_stats(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    data, templates = reviews(tmp_path, n=60)
    stats = build(data, ["classify-1"], tmp_path / "out", template_file=templates, tokenizer=str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = read_split(tmp_path / "out", "train")
    longest = max(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in train)
    tokens = stats["tokens"]["train"]
    assert tokens["prompt"]["max"] == longest
    assert tokens["prompt"]["p50"] <= tokens["prompt"]["p95"] <= longest < tokens["total"]["max"]
    assert stats["tokenizer"] == str(tiny_model_dir)


def test_read_split_errors(tmp_path: Path) -> None:
    with pytest.raises(InstructuneError, match="unknown split 'dev'"):
        read_split(tmp_path, "dev")
    with pytest.raises(InstructuneError, match="is not a built dataset"):
        read_split(tmp_path, "train")


def test_the_template_file_flag_is_spelt_as_the_config_field() -> None:
    """`--template-file` matches `data.template_file`; the old `--templates-file` still works, unlisted."""
    from instructune.cli import build_parser

    parser = build_parser()
    for command in (["data", "build", "--file", "x.jsonl"], ["data", "inspect", "x.jsonl"],
                    ["data", "distill", "x", "--teacher", "m", "--out", "o.jsonl"]):
        assert parser.parse_args([*command, "--template-file", "t.yaml"]).templates_file == "t.yaml"
        assert parser.parse_args([*command, "--templates-file", "t.yaml"]).templates_file == "t.yaml"
