"""Training runs as an unlucky user meets them: a folder of their own files, a second run in the same folder,
out-of-range settings, a damaged checkpoint, changed data, a full disk, an alias bomb. Each case ends in one
`error:` paragraph naming the fix (exit 2) and never touches what the user owns."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from filelock import FileLock

from instructune.cli import main
from instructune.training import checkpoint

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    metrics: [accuracy]
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""


@pytest.fixture
def cfg(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A 4-step LoRA config on 80 toy reviews, a checkpoint every step."""
    rng = random.Random(0)
    rows = [{"text": f"a {rng.choice(['good', 'dull'])} film {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(80)]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text(TEMPLATES)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({
        "model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 8,
        "save_every": 1, "keep_checkpoints": 1, "eval_every": 0, "log_every": 1, "eval_mode": "likelihood",
        "data": {"source": str(tmp_path / "reviews.jsonl"), "template_file": str(tmp_path / "t.yaml"),
                 "templates": ["mood"], "val_limit": 8, "test_limit": 8}}))
    return path


def train(cfg: Path, *args: str) -> int:
    return main(["train", str(cfg), *args])


def test_a_folder_of_user_files_is_refused_and_kept(cfg: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "mine"
    (run / ".tmp-draft").mkdir(parents=True)
    (run / "checkpoint-1000").mkdir()
    (run / "adapter").mkdir()
    for name, text in [("config.yaml", "my notes"), (".tmp-draft/x", "draft"), ("checkpoint-1000/w", "weights")]:
        (run / name).write_text(text)
    before = {p: p.read_text() for p in run.rglob("*") if p.is_file()}
    assert train(cfg, f"output_dir={run}") == 2
    err = capsys.readouterr().err
    assert "already holds files no instructune run wrote" in err and "--overwrite" in err
    assert {p: p.read_text() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    # --overwrite writes the run beside them; its cleanup and pruning leave every one of them alone
    assert train(cfg, f"output_dir={run}", "--overwrite") == 0
    assert (run / ".tmp-draft" / "x").read_text() == "draft" and (run / "checkpoint-1000" / "w").exists()
    assert [p.name for p in checkpoint.checkpoints(run)] == ["checkpoint-00000004"]  # keep 1: ours pruned
    assert checkpoint.latest_checkpoint(run).name == "checkpoint-00000004"


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path: Path) -> None:
    for step in (9, 10, 1000):
        (tmp_path / f"checkpoint-{step:08d}").mkdir()
        (tmp_path / f"checkpoint-{step:08d}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-99999").mkdir()  # not this run's naming: never read, never pruned
    (tmp_path / "checkpoint-99999" / "trainer_state.json").write_text("{}")
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == [
        "checkpoint-00000009", "checkpoint-00000010", "checkpoint-00001000"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "checkpoint-00001000"


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(cfg: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".instructune-run").write_text("{}")
    (run / ".instructune-run.lock.owner").write_text("pid 4242 on trainhost since 2026-12-01 10:00:00\n")
    with FileLock(str(run / ".instructune-run.lock")):  # another process holds the run
        assert train(cfg) == 2
    err = capsys.readouterr().err
    assert "is in use by another run (pid 4242 on trainhost" in err
    assert train(cfg) == 0  # released: the run goes ahead


def test_a_finished_run_is_neither_appended_to_nor_silently_replaced(cfg: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert train(cfg) == 0
    assert train(cfg) == 2 and "already holds a run; pass --resume" in capsys.readouterr().err
    assert train(cfg, "--overwrite") == 0  # starts afresh: the log is this run's alone
    log = (cfg.parent / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log if "loss" in json.loads(x)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("override", "field"), [
    ("seed=-1", "seed must be in 0..4294967295"),
    ("seed=1000000000000000000000000000000", "seed must be in 0..4294967295"),
    ("optim.betas=[2,2]", "betas must be two numbers in [0, 1)"),
    ("optim.weight_decay=.nan", "weight_decay must be a finite number >= 0"),
    ("optim.max_grad_norm=-1", "max_grad_norm must be a finite number >= 0"),
    ("log_every=0", "log_every must be at least 1"),
    ("data.val_limit=-3", "val_limit must be at least 1"),
    ("data.seed=-2", "data.seed must be in 0..4294967295"),
    ("method.dropout=1.5", "dropout must be in [0, 1)"),
    ("register_as=../x", "register_as '../x' is not a registry name"),
])
def test_out_of_range_settings_are_one_paragraph(cfg: Path, override: str, field: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert train(cfg, override) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (cfg.parent / "run").exists()  # refused before anything was written
    assert time.monotonic() - start < 30


def test_a_damaged_checkpoint_or_changed_data_is_refused_on_resume(cfg: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert train(cfg, "max_steps=2") == 0
    run = tmp_path / "run"
    last = checkpoint.latest_checkpoint(run)
    weights = last / "trainable.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01  # one flipped bit in a tensor
    weights.write_bytes(bytes(blob))
    assert train(cfg, "max_steps=2", "--resume") == 2
    assert "trainable.safetensors is changed since it was written" in capsys.readouterr().err.replace("\n", " ")
    # undamaged, but the data changed: refused unless asked for
    shutil.rmtree(run)
    assert train(cfg, "max_steps=2") == 0
    data = tmp_path / "reviews.jsonl"
    data.write_text(data.read_text().replace("film", "movie"))
    assert train(cfg, "max_steps=2", "--resume") == 2
    assert "written while training on other data" in capsys.readouterr().err
    assert train(cfg, "max_steps=2", "--resume", "--allow-data-change") == 0


def test_an_unknown_field_in_the_trainer_state_is_one_paragraph(cfg: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert train(cfg, "max_steps=2") == 0
    last = checkpoint.latest_checkpoint(tmp_path / "run")
    state = json.loads((last / "trainer_state.json").read_text())
    (last / "trainer_state.json").write_text(json.dumps({**state, "warp_factor": 9}))
    sums = json.loads((last / "checksums.json").read_text())
    sums["trainer_state.json"] = checkpoint.sha256(last / "trainer_state.json")  # edited by hand, checksums too
    (last / "checksums.json").write_text(json.dumps(sums))
    assert train(cfg, "max_steps=2", "--resume") == 2
    assert "fields this version does not know (warp_factor)" in capsys.readouterr().err


def test_output_dir_that_is_a_file_or_unwritable(cfg: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert train(cfg, f"output_dir={tmp_path / 'afile'}") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders: the permission cases need another user")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    assert train(cfg, f"output_dir={locked / 'run'}") == 2
    assert "cannot write to output_dir" in capsys.readouterr().err


def test_an_unwritable_cache_is_one_paragraph(cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notadir").write_text("x")
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(tmp_path / "notadir" / "home"))
    assert train(cfg) == 2
    err = capsys.readouterr().err
    assert "cache folder" in err and "set INSTRUCTUNE_HOME" in err and "Traceback" not in err


def test_yaml_alias_bombs_are_refused_with_a_short_message(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmodel: *i\n")  # 1 KB on disk, 10^9 strings expanded
    start = time.monotonic()
    assert main(["train", str(bomb)]) == 2
    err = capsys.readouterr().err
    assert "expands to more than 100,000 values" in err and len(err) < 1000
    assert time.monotonic() - start < 10
    # a value that is merely big is quoted in part, never whole
    big = tmp_path / "big.yaml"
    big.write_text("batch_size: [" + ", ".join(["1"] * 20000) + "]\n")
    assert main(["train", str(big)]) == 2
    assert len(capsys.readouterr().err) < 1000


def test_a_built_dataset_folder_is_a_source_with_its_own_templates(cfg: Path, tmp_path: Path) -> None:
    built = tmp_path / "built"
    assert main(["data", "build", "--file", str(tmp_path / "reviews.jsonl"), "--templates-file",
                 str(tmp_path / "t.yaml"), "--out", str(built)]) == 0
    assert train(cfg, f"data.source={built}", "data.templates=[]", "data.template_file=null") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["templates"] == ["mood"]


def test_a_full_disk_is_one_paragraph_and_leaves_no_partial_files(cfg: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    try:
        assert train(cfg, f"output_dir={disk / 'run'}", "max_steps=1", "save_every=0", "keep_checkpoints=0") == 0
        shutil.rmtree(disk / "run")
        (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 24 * 1024))  # 24 KB left
        code = train(cfg, f"output_dir={disk / 'run'}")
        err = capsys.readouterr().err
        assert code == 2, err
        assert "No space left on device" in err and "Traceback" not in err
        assert not [p.name for p in (disk / "run").iterdir() if p.name.startswith(".tmp-")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
