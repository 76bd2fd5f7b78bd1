"""Studies in the report: the sequential section, the forgetting study's loss curves, labels on the scatter."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from instructune.errors import InstructuneError
from instructune.forgetting.suite import answer_rows
from instructune.report import build_report
from instructune.report.data import TrainingRun, discover
from instructune.report.plots import Colors, loss_curves, place_labels
from instructune.report.sections import loss_series
from instructune.report.watch import curve_panels, drop_curve, drop_keys, retention_curves


def test_sequential_section_shows_the_matrix_measures_and_stage_costs(sequential_dir: Path, tmp_path: Path,
                                                                     page_of: type) -> None:
    page = page_of(build_report([sequential_dir], tmp_path / "out")["html"].read_text(encoding="utf-8"))
    assert page.ids == ["sequential", "loss-curves", "cost", "provenance"]
    rows = page.table("seq/sequential.json: scores")
    assert [r["after stage"] for r in rows] == ["before", "after news-headlines/headline", "after bbc-news/topic",
                                                "after rotten-tomatoes/sentiment"]
    assert [r["bbc-news/topic (accuracy)"] for r in rows] == ["0.250", "0.292", "0.708", "0.667"]
    assert [r["news-headlines/headline (rougeL)"] for r in rows] == ["0.212", "0.384", "0.341", "0.302"]
    per_task = page.table("seq: forgetting per task")
    assert [(r["task"], r["before"], r["after its stage"], r["final"], r["forgetting"]) for r in per_task] == [
        ("news-headlines/headline", "0.212", "0.384", "0.302", "+0.082"),
        ("bbc-news/topic", "0.250", "0.708", "0.667", "+0.041"),
        ("rotten-tomatoes/sentiment", "0.515", "0.870", "0.870", "\u2013")]  # the last task: nothing after it
    stages = page.table("seq: cost of each stage")
    assert [(r["stage"], r["task"], r["wall s"], r["peak MB"]) for r in stages] == [
        ("1", "news-headlines/headline", "121.5", "1101"), ("2", "bbc-news/topic", "122.5", "1102"),
        ("3", "rotten-tomatoes/sentiment", "123.5", "1103")]
    assert len(page.images) == 3  # the matrix heatmap, the first stage's loss curves, cost
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| after bbc-news/topic | 0.341 | 0.708 | 0.545 |" in md
    assert "**BWT**: -0.061" in md or "**BWT**: -0.062" in md  # -0.0615 rounded to 3 decimals
    assert "**FWT**: +0.036" in md and "**final average**: 0.613" in md


def test_a_stage_run_is_grouped_under_its_sequential_study(sequential_dir: Path) -> None:
    runs = discover([sequential_dir])
    assert runs.studies == {"seq": "sequential"}
    assert [(r.label, r.group) for r in runs.trainings] == [("seq/stage-1-news-headlines-headline", "seq")]


def test_no_sequential_section_without_sequential_json(demo_report: tuple, page_of: type) -> None:
    _, paths = demo_report
    page = page_of(paths["html"].read_text(encoding="utf-8"))
    assert "sequential" not in page.ids
    assert "Sequential" not in paths["md"].read_text(encoding="utf-8")


def test_a_broken_sequential_json_names_the_field_and_the_fix(tmp_path: Path, sequential_data: dict) -> None:
    (tmp_path / "s").mkdir()
    bad = {**sequential_data, "matrix": sequential_data["matrix"][:2]}
    del bad["measures"]
    (tmp_path / "s" / "sequential.json").write_text(json.dumps(bad))
    with pytest.raises(InstructuneError) as e:
        discover([tmp_path / "s"])
    msg = str(e.value)
    assert "the top level has no field 'measures'" in msg
    assert "matrix should have 4 rows" in msg and "got rows of [3, 3]" in msg
    assert "run it again" in msg


def test_the_forgetting_study_has_a_train_loss_curve_per_cure(demo_dir: Path) -> None:
    # The study folder as `instructune forgetting` leaves it: besides the cure runs, their configs and scores.
    # Each cure's log holds a retention line ("drop/*") after the loss line of every 5th step; those lines used
    # to replace the loss lines, leaving each cure one train-loss point: an empty panel.
    study = demo_dir / "forgetting"
    assert '"drop/general-probe"' in (study / "lora" / "train_log.jsonl").read_text()
    (study / "scores").mkdir()
    (study / "scores" / "original.json").write_text("{}")
    for cure in ("full", "lora", "l2sp"):
        (study / f"{cure}.yaml").write_text("method: {name: full}\n")
        (study / cure / "tensorboard").mkdir()
    for given in ([demo_dir], [study]):
        series = loss_series(discover(given))
        assert list(series) == ["", "forgetting"] if given == [demo_dir] else ["forgetting"]
        curves = series["forgetting"]
        assert [name for name, _, _ in curves] == ["full", "l2sp", "lora"]
        assert all(len(train) == 13 and len(val) == 3 for _, train, val in curves)


def test_a_cure_whose_log_has_one_train_point_still_gets_its_curve(demo_dir: Path) -> None:
    # a smoke run (2 steps, a line every 5) logs step 1 only
    log = demo_dir / "forgetting" / "lora" / "train_log.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n" + json.dumps({"step": 2, "val_loss": 2.4}) + "\n")
    curves = {name: train for name, train, _ in loss_series(discover([demo_dir / "forgetting"]))["forgetting"]}
    assert curves["lora"] == [(1, 2.5)] and len(curves["full"]) == 13


def test_ten_labels_on_nearly_the_same_point_never_overlap() -> None:
    anchors = [(300.0 + 0.4 * i, 200.0 - 0.3 * i) for i in range(10)]  # ten cures within a pixel or two
    sizes = [(40.0 + 6 * (i % 4), 12.0) for i in range(10)]
    bounds = (60.0, 40.0, 560.0, 360.0)
    boxes = place_labels(anchors, sizes, bounds)
    for a, b in itertools.combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        assert (x1 - x0, y1 - y0) == pytest.approx((w, h))
        assert bounds[0] <= x0 and x1 <= bounds[2] and bounds[1] <= y0 and y1 <= bounds[3]
    assert place_labels(anchors, sizes, bounds) == boxes  # deterministic


def test_a_label_with_room_stays_next_to_its_point() -> None:
    boxes = place_labels([(100.0, 100.0), (400.0, 300.0)], [(50.0, 12.0), (50.0, 12.0)], (0, 0, 600, 400))
    assert boxes == [(106.0, 103.0, 156.0, 115.0), (406.0, 303.0, 456.0, 315.0)]


def test_a_label_at_the_edge_moves_inside() -> None:
    # right at the axes' right edge: the label goes to the left of its point, not off the chart
    (box,) = place_labels([(590.0, 100.0)], [(50.0, 12.0)], (0, 0, 600, 400))
    assert box == (534.0, 103.0, 584.0, 115.0)


def test_a_ten_cure_study_renders_a_row_per_cure(ten_cure_study: Path, tmp_path: Path, page_of: type) -> None:
    page = page_of(build_report([ten_cure_study], tmp_path / "out")["html"].read_text(encoding="utf-8"))
    assert len(page.table("forgetting/forgetting.json")) == 10
    assert len(page.table("forgetting: scores")) == 11  # the original model, then each cure


def test_the_forgetting_table_has_the_mean_relative_drop_of_each_cure(demo_dir: Path, tmp_path: Path,
                                                                       page_of: type) -> None:
    # forgetting.json from before the column (no mean_relative_drop): computed from each drop and before.
    # full: ROUGE-L 0.0912 of 0.2871, probe 0.6021 of 0.8123 nats, text 0.2103 of 3.1045 nats
    page = page_of(build_report([demo_dir], tmp_path / "out")["html"].read_text(encoding="utf-8"))
    rows = page.table("forgetting/forgetting.json")
    full = (0.0912 / 0.2871 + 0.6021 / 0.8123 + 0.2103 / 3.1045) / 3
    assert rows[0]["cure"] == "full" and rows[0]["mean relative drop"] == f"{full:+.1%}"


def test_a_one_point_train_curve_is_drawn(tmp_path: Path) -> None:
    # The empty train-loss panel: a 2-step smoke run logs step 1 only, and a line through one point has no
    # length, so nothing was drawn. Its marker must show in the train panel (left half, above the legend).
    png = loss_curves([("full", [(1, 2.5)], [(2, 2.4)]), ("lora", [(1, 2.7)], [(2, 2.6)])], Colors())
    with Image.open(io.BytesIO(png)) as im:
        rgb = im.convert("RGB")
        panel = rgb.crop((0, 0, rgb.width // 2, int(rgb.height * 0.85)))
        found = [c for _, c in panel.getcolors(maxcolors=1 << 20)]
    for cure in ((0x4F, 0x46, 0xE5), (0x0D, 0x94, 0x88)):  # the palette's first two colours, one per cure
        assert any(sum(abs(a - b) for a, b in zip(c, cure)) < 30 for c in found), cure


def test_stacked_labels_keep_the_order_of_their_points() -> None:
    # a pile at the bottom of the axes: the column grows upwards, and the higher point keeps the higher label
    anchors = [(200.0, 52.0 - 0.5 * i) for i in range(6)]
    boxes = place_labels(anchors, [(50.0, 12.0)] * 6, (0, 40, 600, 400))
    assert [b[1] for b in boxes] == sorted((b[1] for b in boxes), reverse=True)
    assert min(b[1] for b in boxes) >= 40


def test_retention_curves_are_the_logged_drops_beside_the_target_validation(demo_dir: Path) -> None:
    # each cure logs drop/general-probe = step / 300 every 5 steps, at validations (20, 40, 60) in the line of
    # val_accuracy = 0.5 + step / 150; the curve holds both (it used to miss the validation steps)
    runs = discover([demo_dir / "forgetting"]).groups()["forgetting"]
    panels = {title: dict(series) for title, _, series in curve_panels(runs)}
    assert list(panels) == ["target: validation accuracy", "drop: general-probe", "drop: text-perplexity"]
    assert set(panels["drop: general-probe"]) == {"full", "l2sp", "lora"}
    probe = panels["drop: general-probe"]["lora"]
    assert [s for s, _ in probe] == list(range(0, 61, 5))  # from the untrained model's zero
    assert all(v == pytest.approx(s / 300) for s, v in probe)
    assert panels["target: validation accuracy"]["full"] == [(20, pytest.approx(0.5 + 20 / 150)),
                                                             (40, pytest.approx(0.5 + 40 / 150)),
                                                             (60, pytest.approx(0.5 + 60 / 150))]
    png = retention_curves(curve_panels(runs), Colors())
    assert Image.open(io.BytesIO(png)).size[0] > 1000


def test_a_log_that_named_validation_drops_val_drop_still_gives_the_whole_curve(tmp_path: Path) -> None:
    # older logs wrote a validation's drops as val_drop/<measure>; the curve merges both names in step order
    log = [{"step": 10, "drop/general-probe": 0.1}, {"step": 20, "val_loss": 1.0, "val_drop/general-probe": 0.2},
           {"step": 30, "drop/general-probe": 0.25}]
    run = TrainingRun(path=tmp_path, label="old", metrics={}, log=log)
    assert drop_keys([run]) == ["drop/general-probe"]
    assert drop_curve(run, "drop/general-probe") == [(0, 0.0), (10, 0.1), (20, 0.2), (30, 0.25)]


def test_runs_that_did_not_watch_retention_get_no_curve_section(demo_dir: Path, tmp_path: Path, page_of: type) -> None:
    page = page_of(build_report([demo_dir / "lora"], tmp_path / "r1")["html"].read_text(encoding="utf-8"))
    assert "retention-curves" not in page.ids
    page = page_of(build_report([demo_dir], tmp_path / "r2")["html"].read_text(encoding="utf-8"))
    assert "retention-curves" in page.ids


def test_a_kept_tasks_answers_are_shown_side_by_side(demo_dir: Path, tmp_path: Path) -> None:
    html = build_report([demo_dir], tmp_path / "r")["html"].read_text(encoding="utf-8")
    start = html.index("answers of the original model and of each cure")
    shown = html[start:start + 6000]
    for answer in ("Stocks climb on Monday", "positive", "Stocks rise again"):
        assert answer in shown
    assert "<b>rose</b>" not in html  # the prompt is text, escaped


def test_answer_rows_pair_each_cures_answer_with_the_originals() -> None:
    def scored(*preds: str) -> dict:
        return {"measures": {"news/headline": {"answers": [
            {"id": f"n/{i}", "prompt": f"p{i}", "reference": f"r{i}", "prediction": p} for i, p in enumerate(preds)]},
            "general-probe": {"metric": "cross_entropy"}}}

    rows = answer_rows(scored("a0", "a1", "a2"), {"full": scored("pos", "neg", "pos"), "lora": scored("b0", "b1")},
                       shown=2)
    assert list(rows) == ["news/headline"]
    assert rows["news/headline"] == [
        {"id": "n/0", "prompt": "p0", "reference": "r0", "answers": {"original": "a0", "full": "pos", "lora": "b0"}},
        {"id": "n/1", "prompt": "p1", "reference": "r1", "answers": {"original": "a1", "full": "neg", "lora": "b1"}}]
