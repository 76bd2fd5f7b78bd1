"""User files (CSV, JSONL, Parquet), hub names, and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructune.data.sources import load_rows, read_table
from instructune.errors import InstructuneError


def test_jsonl_rows_and_locations(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "Great.", "label": "pos"}\n\n{"text": "Dull.", "label": "neg"}\n')
    table = read_table(str(path))
    assert table.rows == [{"text": "Great.", "label": "pos"}, {"text": "Dull.", "label": "neg"}]
    assert table.where == [f"{path} line 1", f"{path} line 3"]
    assert len(set(table.ids)) == 2 and all(len(i) == 12 for i in table.ids)
    assert read_table(str(path)).ids == table.ids  # content hashes are stable


def test_malformed_jsonl_line_number(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", label: 1}\n')
    with pytest.raises(InstructuneError, match=r"reviews.jsonl line 3: not valid JSON"):
        load_rows(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n["text", "b"]\n')
    with pytest.raises(InstructuneError, match=r"x.jsonl line 2: expected a JSON object .* got list"):
        load_rows(str(path))


@pytest.mark.parametrize("name,text", [("empty.jsonl", "\n\n"), ("empty.csv", "text,label\n")])
def test_empty_input(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InstructuneError, match=f"{name} has no rows"):
        load_rows(str(path))


def test_csv_rows_quoted_newlines_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text('text,label\n"Line one\nline two",pos\nDull,neg\n')
    table = read_table(str(path))
    assert table.rows == [{"text": "Line one\nline two", "label": "pos"}, {"text": "Dull", "label": "neg"}]
    assert table.where == [f"{path} line 2", f"{path} line 4"]


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("text,label\nGood,pos\nGood, really,pos\n")
    with pytest.raises(InstructuneError, match=r"r.csv line 3: 3 fields, but the header has 2 \(text, label\)"):
        load_rows(str(path))


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b"text,label\nCost \xa310,pos\n")
    with pytest.raises(InstructuneError, match="not UTF-8"):
        load_rows(str(path))


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["a", "b"], "label": [0, 1]}), path)
    table = read_table(str(path))
    assert table.rows == [{"id": 7, "text": "a", "label": 0}, {"id": 8, "text": "b", "label": 1}]
    assert table.ids == ["7", "8"] and table.where[1] == f"{path} row 2"


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": "t"}) for i in (1, 2, 1)) + "\n")
    with pytest.raises(InstructuneError, match=r"r.jsonl line 3: id '1' was already used at .*r.jsonl line 1"):
        load_rows(str(path))


def test_identical_rows_get_distinct_ids(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "same"}\n{"text": "same"}\n')
    assert len(set(read_table(str(path)).ids)) == 2


def test_missing_file_and_unknown_pack() -> None:
    with pytest.raises(InstructuneError, match="no such file"):
        load_rows("data/nope.csv")
    with pytest.raises(InstructuneError, match=r"unknown data pack 'rotten-tomato'. Known packs: rotten-tomatoes, "
                                               r"news-headlines, bbc-news, drug-reviews"):
        load_rows("rotten-tomato")


def test_hub_dataset_when_hub_unreachable() -> None:
    # conftest sets HF_HUB_OFFLINE=1, which counts as unreachable.
    with pytest.raises(InstructuneError, match=r"taken as a hub dataset, but the hub is unreachable .* Use a data "
                                               r"pack"):
        load_rows("someone/movie-reviews:train")


def test_local_dataset_folder_through_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nGreat,pos\nDull,neg\n")
    (folder / "test.csv").write_text("text,label\nFine,pos\n")
    table = read_table(f"{folder}:test")
    assert table.rows == [{"text": "Fine", "label": "pos"}] and table.where == [f"{folder}:test row 1"]
    assert [r["text"] for r in load_rows(str(folder))] == ["Great", "Dull"]
    with pytest.raises(InstructuneError, match="could not load dataset .* split 'dev'"):
        load_rows(f"{folder}:dev")
