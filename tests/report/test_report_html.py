"""The HTML page and the Markdown summary: sections, the numbers in their tables, embedded images, the CLI."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from instructune.cli import main
from instructune.report import build_report
from instructune.report.data import discover
from instructune.report.markdown import cell
from instructune.report.studies import headline_cards

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# results first, provenance last (and collapsed): the page opens on what came out, not on what produced it
SECTIONS = ["results", "forgetting", "loss-curves", "retention-curves", "before-after", "cost", "examples", "provenance"]


@pytest.fixture(scope="module")
def built(demo_report: tuple[Path, dict[str, Path]], page_of: type) -> tuple[Path, dict[str, Path], Any]:
    demo, paths = demo_report
    return demo, paths, page_of(paths["html"].read_text(encoding="utf-8"))


def test_every_section_is_there_in_order(built: tuple) -> None:
    _, paths, page = built
    assert page.ids == SECTIONS
    assert set(paths) == {"html", "md"} and all(p.exists() for p in paths.values())


def test_eval_table_numbers_are_the_json_values(built: tuple) -> None:
    demo, _, page = built
    ev = json.loads((demo / "eval" / "eval.json").read_text())
    rows = page.table("rotten-tomatoes / sentiment / test")
    assert len(rows) == len(ev["results"]) == 4
    for row, res in zip(rows, ev["results"]):
        assert row["setting"] == res["setting"] and row["shots"] == str(res["shots"])
        for key in ("accuracy", "f1", "invalid_rate", "cross_entropy"):
            assert row[key] == f"{res['metrics'][key]:.3f}"
        assert row["examples/s"] == f"{res['timings']['examples_per_s']:.1f}"
    assert [r["kind"] for r in rows] == ["base", "few-shot", "tuned", "tuned"]


def test_training_and_cost_tables_are_the_metrics_json_values(built: tuple) -> None:
    demo, _, page = built
    test_rows = {r["run"]: r for r in page.table("test split (metrics.json)")}
    assert set(test_rows) == {"full", "lora"}  # the cure runs hold no test scores
    for name, row in test_rows.items():
        m = json.loads((demo / name / "metrics.json").read_text())
        assert row["accuracy"] == f"{m['test']['accuracy']:.3f}" and row["loss"] == f"{m['test']['loss']:.3f}"
    cost = {r["run"]: r for r in page.table_with("trainable params")}
    assert list(cost) == ["full", "lora", "forgetting/full", "forgetting/l2sp", "forgetting/lora"]
    m = json.loads((demo / "lora" / "metrics.json").read_text())
    assert cost["lora"]["trainable params"] == "460,800"
    assert cost["lora"]["trainable %"] == f"{m['trainable_pct']:.2f}%"
    assert cost["lora"]["peak memory MB"] == f"{m['peak_memory_mb']:.0f}"


def test_forgetting_table_shows_gain_drop_and_interval_of_every_cure(built: tuple) -> None:
    demo, _, page = built
    fg = json.loads((demo / "forgetting" / "forgetting.json").read_text())
    rows = page.table("forgetting/forgetting.json")
    assert [r["cure"] for r in rows] == [c["cure"] for c in fg["cures"]]
    for row, c in zip(rows, fg["cures"]):
        assert row["gain"] == f"{c['gain']:+.3f}" and row["after"] == f"{c['target_after']:.3f}"
        for key, m in c["retention"].items():
            assert row[f"{key} drop [95% CI]"] == f"{m['drop']:+.3f}[{m['low']:+.3f}, {m['high']:+.3f}]"
        assert row["peak MB"] == f"{c['peak_memory_mb']:.0f}"
    scores = page.table("forgetting: scores")  # a row per cure (after the original model), a column per measure
    assert [r["cure"] for r in scores] == ["before (original model)", "full", "lora", "l2sp"]
    title = fg["cures"][2]["retention"]["rotten-tomatoes-news/title"]
    assert scores[0]["rotten-tomatoes-news/title (rougeL)"] == f"{title['before']:.3f}"
    assert scores[3]["rotten-tomatoes-news/title (rougeL)"] == f"{title['after']:.3f}"
    assert scores[3]["target: rotten-tomatoes/sentiment (accuracy)"] == f"{fg['cures'][2]['target_after']:.3f}"


def test_images_are_embedded_pngs_and_nothing_is_fetched(built: tuple) -> None:
    _, paths, page = built
    assert len(page.images) == 7  # results, 2 loss charts, retention curves, before/after, gain-vs-forgetting, cost
    for img in page.images:
        head, _, payload = img["src"].partition(",")
        assert head == "data:image/png;base64" and img["alt"]
        png = base64.b64decode(payload, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.width >= 800 and im.height >= 200
    text = paths["html"].read_text(encoding="utf-8")
    assert not page.links and "@import" not in text and "url(" not in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)


def test_model_text_is_escaped(built: tuple) -> None:
    _, paths, _ = built
    text = paths["html"].read_text(encoding="utf-8")
    assert "<b>witty</b>" not in text and "&lt;b&gt;witty&lt;/b&gt;" in text


def test_markdown_has_the_tables_and_charts_written_next_to_it(built: tuple) -> None:
    demo, paths, page = built
    md = paths["md"].read_text(encoding="utf-8")
    fg = json.loads((demo / "forgetting" / "forgetting.json").read_text())
    assert "| setting | kind | shots | n | accuracy | f1 | invalid_rate | cross_entropy | examples/s |" in md
    assert "| smollm2-135m-instruct + lora/adapter | tuned | 0 | 6 | 0.833 | 0.829 | 0.000 | 1.580 | 3.3 |" in md
    full = fg["cures"][0]
    assert f"| full | 0.515 | 0.870 | {full['gain']:+.3f} | +0.091 [+0.041, +0.140] |" in md
    assert "> Review: a moving portrait of grief | hope." in md
    refs = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", md)
    assert len(refs) == len(page.images) == len(set(refs))
    embedded = {base64.b64decode(i["src"].partition(",")[2]) for i in page.images}
    assert {(paths["md"].parent / r).read_bytes() for r in refs} == embedded


def test_provenance_comes_last_and_folded_in_html_and_markdown(built: tuple) -> None:
    _, paths, page = built
    text = paths["html"].read_text(encoding="utf-8")
    provenance = text[text.index('<section id="provenance">'):]
    assert re.match(r'<section id="provenance">\s*<details class="fold">', provenance)  # no `open`: folded
    assert "files read" in provenance
    nav = re.findall(r'<a href="#([^"]+)">', text)
    assert nav == SECTIONS
    md = paths["md"].read_text(encoding="utf-8")
    titles = re.findall(r"^## (.+)$", md, re.M)
    assert titles[0] == "Results" and titles[-1] == "What produced this report"
    assert titles[1].startswith("Forgetting")
    assert md.split("## What produced this report", 1)[1].lstrip().startswith("<details><summary>")


def test_forgetting_opens_with_its_headline_numbers(demo_dir: Path) -> None:
    fg = discover([demo_dir]).forgettings[0]
    cards = [(c.label, c.value, c.sub) for c in headline_cards(fg)]
    # significant drops (interval above 0): full 3 of 3, lora 2 (probe, perplexity), l2sp 1 (probe)
    assert cards == [("target accuracy \u00b7 before", "0.515", "the original model"),
                     ("largest gain", "+0.355", "full: 0.870 after"),
                     ("forgot least", "1 of 3", "l2sp: tasks forgotten beyond noise"),
                     ("forgot most", "3 of 3", "full: tasks forgotten beyond noise")]


def test_markdown_cells_survive_pipes_and_newlines() -> None:
    assert cell("a | b\nc") == "a \\| b c"


def test_sections_appear_only_with_their_data(demo_dir: Path, tmp_path: Path, page_of: type) -> None:
    only_eval = build_report([demo_dir / "eval"], tmp_path / "a")
    assert page_of(only_eval["html"].read_text()).ids == ["results", "examples", "provenance"]
    only_run = build_report([demo_dir / "lora"], tmp_path / "b")
    page = page_of(only_run["html"].read_text())
    assert page.ids == ["results", "loss-curves", "cost", "provenance"]
    shutil.rmtree(demo_dir / "forgetting" / "full")  # a cure without its run folder: cost from forgetting.json
    study = page_of(build_report([demo_dir / "forgetting"], tmp_path / "c")["html"].read_text())
    assert study.ids == ["forgetting", "loss-curves", "retention-curves", "before-after", "cost", "provenance"]
    assert [r["run"] for r in study.table_with("trainable params")] == ["forgetting/l2sp", "forgetting/lora",
                                                                      "forgetting/full"]


def test_provenance_without_run_info_shows_the_configs(demo_dir: Path, tmp_path: Path) -> None:
    text = build_report([demo_dir / "lora"], tmp_path / "r")["html"].read_text()
    assert "lora/config.yaml" in text and "rotten-tomatoes" in text
    with_info = build_report([demo_dir], tmp_path / "s")["html"].read_text()
    assert "9f2c" + "0" * 60 in with_info and "transformers" in with_info and "a1b2" + "1" * 60 in with_info


def test_cli_writes_into_the_first_run_dir_and_prints_the_paths(demo_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(demo_dir / "lora"), str(demo_dir / "eval")]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(demo_dir / "lora" / "report" / "report.html"), str(demo_dir / "lora" / "report" / "report.md")]
    assert main(["report", str(demo_dir), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.html").exists() and (tmp_path / "o" / "report_files" / "cost.png").exists()
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing to report" in err and "metrics.json" in err and "Traceback" not in err


def test_a_generation_eval_shows_rouge_and_unmarked_answers(tmp_path: Path, page_of: type) -> None:
    preds = [{"id": f"n{i}", "prompt": f"Give a title: story {i}", "reference": f"title {i}",
              "prediction": f"a title {i}"} for i in range(5)]
    results = [{"setting": "m", "shots": 0, "metrics": {"rouge1": 0.41, "rougeL": 0.3862, "bleu": 7.25},
                "predictions": preds},
               {"setting": "m + run/adapter", "shots": 0, "metrics": {"rouge1": 0.52, "rougeL": 0.4975, "bleu": 11.5},
                "predictions": preds[::-1]}]
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "eval.json").write_text(json.dumps({"data": "news", "template": "title", "split": "test",
                                                           "results": results}))
    paths = build_report([tmp_path / "ev"], tmp_path / "out")
    page = page_of(paths["html"].read_text())
    rows = page.table("news / title / test")
    assert [(r["rougeL"], r["bleu"]) for r in rows] == [("0.386", "7.250"), ("0.497", "11.500")]
    assert len(page.images) == 1
    text = paths["html"].read_text()
    assert text.count('class="example"') == 4 and "class=\"mark" not in text  # no right/wrong without labels


def test_score_cards_and_the_test_table_say_which_examples(demo_dir: Path) -> None:
    """An evaluation's best fine-tuned score (its own seeded subset) sits beside a run's own test score (its
    test split): each says which examples it is on, so two numbers for one run are not a puzzle."""
    from instructune.report.sections import highlight_cards, test_table

    metrics = json.loads((demo_dir / "lora" / "metrics.json").read_text())
    (demo_dir / "lora" / "metrics.json").write_text(json.dumps({**metrics, "test_examples": 300}))
    runs = discover([demo_dir])
    tested = [r for r in runs.trainings if r.metrics.get("test")]
    tuned = next(c for c in highlight_cards(runs.evals, tested) if c.label == "accuracy \u00b7 best fine-tuned")
    assert tuned.sub.endswith("; 6 test examples picked by the evaluation (eval/eval.json); a run's own test "
                              "score uses its own subset")
    table = test_table(tested)
    n = {row[0].text: row[table.columns.index("n")].text for row in table.rows}
    assert n == {"full": "\u2013", "lora": "300"}  # a run written before runs recorded it: a dash
    assert "own seeded subset" in table.note
    only_runs = highlight_cards([], tested)
    assert {c.sub for c in only_runs} == {"full; the run's own test split",
                                          "lora; the run's own test split (300 examples, metrics.json)"}
