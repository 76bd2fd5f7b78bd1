"""Reading run folders: discovery, grouping, labels, train logs, and the errors a user sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instructune.errors import InstructuneError
from instructune.report.data import discover, read_train_log, setting_kind
from instructune.report.examples import pick_columns, pick_ids, user_turn


def test_discover_finds_every_file_and_groups_cure_runs_under_their_study(demo_dir: Path) -> None:
    runs = discover([demo_dir])
    assert [i.label for i in runs.infos] == ["demo"]
    assert [e.label for e in runs.evals] == ["eval"]
    assert [f.label for f in runs.forgettings] == ["forgetting"]
    assert sorted(r.label for r in runs.trainings) == ["forgetting/full", "forgetting/l2sp", "forgetting/lora",
                                                      "full", "lora"]
    groups = runs.groups()
    assert list(groups) == ["", "forgetting"]
    assert [r.name for r in groups[""]] == ["full", "lora"]
    assert [r.name for r in groups["forgetting"]] == ["full", "l2sp", "lora"]
    lora = next(r for r in runs.trainings if r.label == "lora")
    assert lora.metrics["trainable_params"] == 460_800 and lora.config["method"]["name"] == "lora"
    assert len(lora.curve("loss")) == 13 and [s for s, _ in lora.curve("val_loss")] == [20, 40, 60]


def test_labels_are_relative_to_the_folder_several_inputs_share(demo_dir: Path) -> None:
    runs = discover([demo_dir / "lora", demo_dir / "forgetting"])
    assert sorted(r.label for r in runs.trainings) == ["forgetting/full", "forgetting/l2sp", "forgetting/lora", "lora"]
    assert discover([demo_dir / "lora"]).trainings[0].label == "lora"  # the folder itself: its name
    assert len(discover([demo_dir / "eval" / "eval.json"]).evals) == 1  # a file works too


def test_overlapping_inputs_read_each_file_once(demo_dir: Path) -> None:
    runs = discover([demo_dir, demo_dir / "lora"])
    assert len(runs.trainings) == 5


def test_train_log_resumed_steps_keep_the_last_record_and_a_cut_last_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "val_loss": 2.4},
               {"step": 3, "loss": 2.2},  # interrupted here; resumed from the step-2 checkpoint:
               {"step": 3, "loss": 2.1}, {"step": 4, "loss": 1.9}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')
    out = read_train_log(log)
    assert [(r["step"], r.get("loss", r.get("val_loss"))) for r in out] == [(1, 3.0), (2, 2.5), (2, 2.4), (3, 2.1),
                                                                          (4, 1.9)]


def test_train_log_keeps_every_kind_of_record_a_step_holds(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    records = [{"step": 5, "loss": 2.0, "lr": 1e-4}, {"step": 5, "drop/general-probe": 0.1},
               {"step": 10, "loss": 1.5, "lr": 1e-4}, {"step": 10, "val_loss": 1.6},
               {"step": 5, "loss": 1.9, "lr": 1e-4}]  # resumed from step 4: step 5 again, its loss line wins
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_train_log(log) == [records[4], records[1], records[2], records[3]]


def test_train_log_broken_line_in_the_middle_names_it(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 3.0}\nnot json\n{"step": 2, "loss": 2.0}\n')
    with pytest.raises(InstructuneError, match="line 2"):
        read_train_log(log)


def test_a_folder_with_nothing_to_report_names_the_files_looked_for(tmp_path: Path, demo_dir: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InstructuneError) as e:
        discover([demo_dir, tmp_path / "empty"])
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg
    for name in ("metrics.json", "eval.json", "forgetting.json", "run_info.json"):
        assert name in msg
    with pytest.raises(InstructuneError, match="does not exist"):
        discover([tmp_path / "missing"])


def test_broken_and_incomplete_files_are_reported_with_where_and_what(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "eval.json").write_text('{"results": [\n  {"setting": "m",}\n]}')
    with pytest.raises(InstructuneError, match=r"eval.json line 2 column"):
        discover([tmp_path / "a"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "eval.json").write_text(json.dumps({"results": [{"setting": "m"}, {"shots": 0}]}))
    with pytest.raises(InstructuneError) as e:
        discover([tmp_path / "b"])
    assert "2 problems" in str(e.value) and "results[0] has no field 'shots', 'metrics'" in str(e.value)


def test_hidden_folders_are_not_searched(tmp_path: Path, demo_dir: Path) -> None:
    shutil.copytree(demo_dir / "lora", tmp_path / "run")
    shutil.copytree(demo_dir / "full", tmp_path / "run" / ".tmp-old")
    assert len(discover([tmp_path / "run"]).trainings) == 1


def chatml(text: str) -> str:
    return f"<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def test_setting_kinds_follow_the_eval_labels(demo_dir: Path) -> None:
    kinds = [setting_kind(r) for r in json.loads((demo_dir / "eval" / "eval.json").read_text())["results"]]
    assert kinds == ["base", "few-shot", "tuned", "tuned"]
    assert setting_kind({"setting": "smollm2-135m-instruct", "shots": 0, "kind": "tuned"}) == "tuned"


def test_examples_mix_what_tuning_fixed_and_broke(demo_dir: Path) -> None:
    results = json.loads((demo_dir / "eval" / "eval.json").read_text())["results"]
    columns = pick_columns(results)
    assert [(c["setting"], c["shots"]) for c in columns] == [(r["setting"], r["shots"]) for r in results]
    ids, note = pick_ids(columns)
    # base right: 0, 4, 5; full model right: 0, 1, 2, 3, 5 -> fixed 1, 2, 3; broke 4; both 0, 5
    assert ids == ["rt-0", "rt-1", "rt-2", "rt-4"]
    assert "3 right that smollm2-135m-instruct got wrong, and 1 wrong" in note


def test_user_turn_strips_chat_markup_and_keeps_plain_prompts() -> None:
    assert user_turn(chatml("Review: fine.\nPositive or negative?")) == "Review: fine.\nPositive or negative?"
    few = chatml("ex 1").replace("<|im_start|>assistant\n", "<|im_start|>assistant\npositive<|im_end|>\n") \
        + "<|im_start|>user\nthe real one<|im_end|>\n<|im_start|>assistant\n"
    assert user_turn(few) == "the real one"
    assert user_turn("  plain prompt\n") == "plain prompt"
