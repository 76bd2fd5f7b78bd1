"""Round three, defect 4: a command never writes over its own input. `data distill X --out X` once turned a
50-conversation file into the teacher's 2 answers and exited 0. Every writer (data distill --out, data
build --out and its export, data inspect --html, adapters merge --out) refuses an output that is an input
(the same file by samefile: a symlink, a hard link, `a/../b`), one inside an input folder, or a folder
replaced whole that holds one: exit 2, one paragraph, the input byte for byte as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from instructune.adapters.merge import random_lora
from instructune.cli import main

CONVERSATIONS = 50


def conversations(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say a colour. ({i})"},
                                                     {"role": "assistant", "content": "blue"}]}) + "\n"
                            for i in range(CONVERSATIONS)))
    return path


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *kept: Path) -> str:
    """Run the command: exit 2, one paragraph naming the option and the fix, every `kept` file unchanged."""
    before = {p: p.read_bytes() for p in kept}
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "writing there would destroy what the command reads" in err, err
    assert {p: p.read_bytes() for p in kept} == before
    return err


def spelled(spelling: str, source: Path, tmp: Path) -> Path:
    """`source` named another way: as it is, through `..`, a symlink, a hard link."""
    if spelling == "a/../b":
        (source.parent / "elsewhere").mkdir()
        return source.parent / "elsewhere" / ".." / source.name
    if spelling == "a symlink":
        (tmp / "link.jsonl").symlink_to(source)
        return tmp / "link.jsonl"
    if spelling == "a hard link":
        os.link(source, tmp / "hard.jsonl")
        return tmp / "hard.jsonl"
    return source


@pytest.mark.parametrize("spelling", ["the same path", "a/../b", "a symlink", "a hard link"])
def test_distill_refuses_an_out_that_is_its_source(spelling: str, tmp_path: Path, teacher: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = conversations(tmp_path / "data" / "chat.jsonl")
    out = spelled(spelling, source, tmp_path)
    err = refused(["data", "distill", str(source), "--teacher", str(teacher), "--limit", "2", "--max-new-tokens", "3",
                   "--out", str(out)], capsys, source)
    assert f"--out {out} is the input SOURCE" in err and "give --out a new file" in err
    assert len(source.read_text().splitlines()) == CONVERSATIONS


def test_distill_refuses_its_templates_file_and_a_file_inside_the_teacher(tmp_path: Path, teacher: Path,
                                                                         toy_tasks: tuple[Path, Path, Path],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    target, _, tpl = toy_tasks
    args = ["data", "distill", str(target), "--teacher", str(teacher), "--templates-file", str(tpl), "--limit", "2",
            "--max-new-tokens", "3"]
    assert "is the input --templates-file" in refused([*args, "--out", str(tpl)], capsys, tpl, target)
    config = teacher / "config.json"
    assert "lies inside the input folder --teacher" in refused([*args, "--out", str(config)], capsys, config)
    assert main([*args, "--out", str(tmp_path / "answers.jsonl")]) == 0  # a new file beside them is written
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 2


def test_build_refuses_an_out_folder_whose_files_are_its_inputs(tmp_path: Path, toy_tasks: tuple[Path, Path, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    target, _, tpl = toy_tasks
    folder = tmp_path / "built"
    rows = folder / "train.jsonl"  # the rows file is named like the train split the build writes
    folder.mkdir()
    shutil.copy(target, rows)
    args = ["data", "build", "--file", str(rows), "--templates-file", str(tpl), "--template", "mood"]
    err = refused([*args, "--out", str(folder)], capsys, rows)
    assert f"--out {folder} would write {rows}, which is the input --file" in err and "folder of its own" in err
    refused([*args, "--out", str(rows)], capsys, rows)  # the file itself as the output folder
    # an export writes <split>.<format>.jsonl: a source of that name in --out is refused before the build
    exported = tmp_path / "exp" / "train.alpaca.jsonl"
    exported.parent.mkdir()
    exported.write_text("".join(json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) + "\n"
                                for i in range(20)))
    err = refused(["data", "build", "--file", str(exported), "--format", "alpaca", "--out", str(exported.parent)],
                  capsys, exported)
    assert "which is the input --file" in err
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0  # a folder of its own is written
    assert (tmp_path / "fresh" / "stats.json").exists()


def test_inspect_refuses_html_over_its_source(tmp_path: Path, tiny_model_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = conversations(tmp_path / "chat.jsonl")
    err = refused(["data", "inspect", str(source), "--model", str(tiny_model_dir), "--html", str(source)],
                  capsys, source)
    assert "--html" in err and "give --html a new file name" in err


def test_merge_refuses_an_out_that_is_or_holds_the_adapter_or_the_base(tmp_path: Path, tiny_model_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)  # a copy: the code before the fix replaced the folder it was given
    adapter = random_lora(base, tmp_path / "run" / "adapter", seed=3)
    weights = [adapter / "adapter_model.safetensors", base / "model.safetensors"]
    cmd = ["adapters", "merge", str(adapter), "--base", str(base), "--force", "--out"]
    assert "is the input adapter" in refused([*cmd, str(adapter)], capsys, *weights)
    assert "holds the input adapter" in refused([*cmd, str(tmp_path / "run")], capsys, *weights)  # replaced whole
    assert "is the input --base" in refused([*cmd, str(base)], capsys, *weights)
    assert "lies inside the input folder adapter" in refused([*cmd, str(adapter / "merged")], capsys, *weights)
    assert main([*cmd, str(tmp_path / "merged")]) == 0


def test_paths_are_compared_as_the_files_they_name(tmp_path: Path) -> None:
    from instructune.paths import inside, same_path

    (tmp_path / "a").mkdir()
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert same_path(tmp_path / "link", tmp_path / "a") and same_path(tmp_path / "a" / ".." / "f", tmp_path / "f")
    assert same_path(tmp_path / "new" / ".." / "f", tmp_path / "f")  # a path that does not exist yet
    assert not same_path(tmp_path / "a", tmp_path / "f")
    assert inside(tmp_path / "link" / "x.jsonl", tmp_path / "a") and not inside(tmp_path / "a", tmp_path / "a")
