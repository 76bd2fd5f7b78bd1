"""Result files and the docs rendered from them: a table in README.md or docs/ that differs from its file fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instructune import results
from instructune.errors import InstructuneError

REPO = Path(__file__).resolve().parents[1]
MACHINE = {"cpu": "AMD EPYC", "cpu_class": "AVX2", "flags": ["avx2"], "fp32_gflops": 150.0, "bf16_gflops": 18.0,
           "torch": "2.13.0+cpu", "threads": 2}


def test_the_docs_equal_what_the_result_files_render() -> None:
    assert results.blocks(REPO), "README.md and docs/ mark their result tables"
    assert results.stale(REPO) == [], "run `instructune results render` and commit the docs"


def test_every_committed_result_file_is_complete() -> None:
    files = sorted([*REPO.glob("results/*.json"), *REPO.glob("bench/results/*.json")])
    assert len(files) >= 20
    for path in files:
        result = results.load(path)
        assert result["tables"], path
        assert result["commit"] and result["command"] and result["date"], path
    # every file a block names exists, and every run result is shown somewhere
    shown = {ref for _, ref, _ in results.blocks(REPO)}
    assert {str(p.relative_to(REPO)) for p in REPO.glob("results/*.json")} <= shown


def copy_docs(tmp_path: Path) -> Path:
    for doc in ["README.md", *[str(p.relative_to(REPO)) for p in REPO.glob("docs/*.md")]]:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    for folder in ("results", "bench/results"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_editing_a_number_in_a_readme_table_is_caught_and_render_restores_it(tmp_path: Path) -> None:
    root = copy_docs(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    assert "| 406 | 2.78x |" in text
    readme.write_text(text.replace("| 406 | 2.78x |", "| 416 | 2.78x |"))
    assert results.stale(root) == ["README.md"]
    assert results.render(root) == ["README.md"]
    assert readme.read_text() == text


def test_a_changed_result_file_changes_the_docs(tmp_path: Path) -> None:
    root = copy_docs(tmp_path)
    path = root / "bench/results/train_throughput_avx2.json"
    data = json.loads(path.read_text())
    data["tables"]["summary"]["rows"][0][5] = "999"
    path.write_text(json.dumps(data))
    assert results.stale(root) == ["README.md"]


def block_doc(root: Path, ref: str, table: str = "main") -> Path:
    doc = root / "README.md"
    doc.write_text(f"# x\n\ntext\n<!-- result: {ref}#{table} -->\n<!-- /result -->\n")
    return doc


def write_file(root: Path, **changes: object) -> Path:
    result = {"schema": results.SCHEMA, "name": "t", "command": "instructune t", "config": None, "commit": "abc",
              "date": "2026-12-07 10:00 UTC", "machine": MACHINE,
              "tables": {"main": results.table(["a", "b"], [["x", "1.5"]], "lr")}}
    for key, value in changes.items():
        if value is None:
            result.pop(key)
        else:
            result[key] = value
    (root / "r.json").write_text(json.dumps(result))
    return root / "r.json"


def test_a_block_renders_its_table(tmp_path: Path) -> None:
    write_file(tmp_path)
    doc = block_doc(tmp_path, "r.json")
    assert results.render(tmp_path) == ["README.md"]
    assert doc.read_text().endswith("<!-- result: r.json#main -->\n| a | b |\n|---|---:|\n| x | 1.5 |\n<!-- /result -->\n")
    assert results.stale(tmp_path) == []


@pytest.mark.parametrize("case, match", [
    ("missing", r"README.md line 4: r.json: result file missing"),
    ("malformed", r"README.md line 4: r.json: not a readable JSON result file"),
    ("schema", r"field schema is 0, this instructune reads schema 1"),
    ("field", r"field commit missing"),
    ("machine", r"field machine lacks fp32_gflops"),
    ("table", r"field tables.other is not in the result file; its tables: main"),
    ("row", r"field tables.main.rows\[0\] has 1 cells for 2 columns"),
])
def test_bad_result_files_name_the_file_and_field(tmp_path: Path, case: str, match: str) -> None:
    table = "other" if case == "table" else "main"
    block_doc(tmp_path, "r.json", table)
    if case == "malformed":
        (tmp_path / "r.json").write_text("{not json")
    elif case != "missing":
        write_file(tmp_path, **{"schema": {"schema": 0}, "field": {"commit": None},
                                "machine": {"machine": {k: v for k, v in MACHINE.items() if k != "fp32_gflops"}},
                                "row": {"tables": {"main": {"columns": ["a", "b"], "align": "ll", "rows": [["x"]]}}},
                                }.get(case, {}))
    with pytest.raises(InstructuneError, match=match):
        results.render(tmp_path)


def test_the_command_exits_2_naming_the_file_without_a_traceback(tmp_path: Path) -> None:
    block_doc(tmp_path, "r.json")
    run = subprocess.run([sys.executable, "-m", "instructune", "results", "check", "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "README.md line 4: r.json: result file missing" in run.stderr and "Traceback" not in run.stderr
    write_file(tmp_path)
    stale = subprocess.run([sys.executable, "-m", "instructune", "results", "check", "--root", str(tmp_path)],
                           capture_output=True, text=True)
    assert stale.returncode == 1 and "README.md" in stale.stdout


def test_write_results_records_provenance_and_the_tables_it_printed(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    md = "Title line.\n\n| work | s |\n|---|---:|\n| one | 1.50 |\n\nnote\n\n| x |\n|---|\n| y |\n"
    path = results.write_results(tmp_path, "bench", {"machine": MACHINE, "rows": [1]}, md, command="python b.py")
    assert capsys.readouterr().out == md  # the .md named by the CPU class it ran on, also printed
    data = results.load(path.with_suffix(".json"))
    assert path.name == "bench_avx2.md" and path.read_text() == md
    assert (data["schema"], data["name"], data["command"], data["rows"]) == (results.SCHEMA, "bench", "python b.py", [1])
    assert len(data["commit"]) >= 40 and data["date"].endswith("UTC")
    assert results.render_table(data, "main") == "| work | s |\n|---|---:|\n| one | 1.50 |\n"
    assert results.render_table(data, "t2") == "| x |\n|---|\n| y |\n"


def test_an_indented_example_of_the_markers_is_left_alone(tmp_path: Path) -> None:
    write_file(tmp_path)
    doc = tmp_path / "README.md"
    example = "Mark a table:\n\n    <!-- result: r.json#main -->\n    <!-- /result -->\n"
    doc.write_text(example)
    assert results.blocks(tmp_path) == [] and results.render(tmp_path) == [] and doc.read_text() == example
