"""A demo-shaped run folder written by hand: the files `train`, `eval`, `forgetting`, `sequential` and `demo`
write."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
REVIEWS = ["a gorgeous, <b>witty</b>, seductive movie.", "the plot is nothing but boilerplate clich\u00e9s.",
           "an utterly charming and hilarious film.", "too long, too loud and too dumb.",
           "a moving portrait of grief | hope.", "it never rises above its sitcom roots."]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"]


def chatml(text: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def predictions(right: list[bool], answers: dict[str, str]) -> list[dict]:
    rows = []
    for i, (review, label, ok) in enumerate(zip(REVIEWS, LABELS, right)):
        guess = label if ok else ("neg" if label == "pos" else "pos")
        rows.append({"id": f"rt-{i}", "prompt": chatml(f"Review: {review}\nIs this review positive or negative?"),
                     "reference": answers[label], "prediction": answers[guess].capitalize() + ".", "label": label,
                     "predicted_label": guess, "correct": ok})
    return rows


def eval_result(setting: str, shots: int, right: list[bool], f1: float) -> dict:
    answers = {"pos": "positive", "neg": "negative"}
    acc = sum(right) / len(right)
    return {"setting": setting, "shots": shots,
            "metrics": {"accuracy": acc, "f1": f1, "invalid": 0.0, "invalid_rate": 0.0,
                        "cross_entropy": 2.413 - acc, "perplexity": math.exp(2.413 - acc)},
            "predictions": predictions(right, answers),
            "settings": {"task": "classification", "mode": "generate", "shots": shots, "n": len(right), "seed": 0},
            "timings": {"seconds": 1.84, "examples_per_s": 3.2608695652, "ce_seconds": 0.41}}


EVAL = {"data": "rotten-tomatoes", "dataset": "/cache/datasets/rotten-tomatoes-1f3a", "template": "sentiment",
        "split": "test", "seed": 0, "mode": "generate", "results": [
            eval_result("smollm2-135m-instruct", 0, [True, False, False, False, True, True], 0.4761904762),
            eval_result("smollm2-135m-instruct", 5, [True, False, True, False, True, True], 0.6571428571),
            eval_result("smollm2-135m-instruct + lora/adapter", 0, [True, True, True, False, True, True], 0.8285714286),
            eval_result("runs/demo/full/model", 0, [True, True, True, True, False, True], 0.8333333333)]}


def metrics(method: str, trainable: int, test: dict, memory: float, wall: float) -> dict:
    total = 134_515_008
    return {"method": method, "model": "smollm2-135m-instruct", "stopped": "max_steps", "steps": 60,
            "trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
            "validation": {"loss": 0.4127 if method == "lora" else 0.3981, "accuracy": 0.84375},
            "test": test, "skipped_batches": 0, "tokens_per_s": 1834.7, "peak_memory_mb": memory,
            "wall_seconds": wall, "train_examples": 480, "dropped_examples": 0, "padding_fraction": 0.0712,
            "templates": ["sentiment"], "task": "classification"}


def train_log(scale: float, retention_every: int = 0) -> str:
    """A loss line every 5 steps, validation at 20, 40, 60; with `retention_every`, the retention drops: in the
    validation lines, and between validations as lines of their own right after the loss line of the same step."""
    lines = [{"step": s, "loss": scale * (2.5 * math.exp(-s / 12) + 0.35), "lr": 2e-4, "tokens_per_s": 1800.0,
              "epoch": 0} for s in [1, *range(5, 61, 5)]]
    lines += [{"step": s, "val_loss": scale * (2.2 * math.exp(-s / 15) + 0.4), "val_accuracy": 0.5 + s / 150}
              for s in (20, 40, 60)]
    if retention_every:  # at a validation the loop logs the drops (drop/*) with the validation scores
        for line in lines[-3:]:
            line.update({"drop/general-probe": line["step"] / 300, "drop/text-perplexity": line["step"] / 900})
        lines += [{"step": s, "drop/general-probe": s / 300, "drop/text-perplexity": s / 900}
                  for s in range(retention_every, 61, retention_every) if s not in (20, 40, 60)]
    lines.sort(key=lambda r: (r["step"], "val_loss" in r, "loss" not in r))
    return "".join(json.dumps(r) + "\n" for r in lines)


def write_run(folder: Path, method: str, trainable: int, test: dict, memory: float, wall: float, scale: float,
              retention_every: int = 0) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics(method, trainable, test, memory, wall), indent=2))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", "seed": 0,
                                                        "method": {"name": method, "r": 8},
                                                        "data": {"source": "rotten-tomatoes"},
                                                        "optim": {"lr": 2e-4}}))
    (folder / "train_log.jsonl").write_text(train_log(scale, retention_every))
    (folder / ("adapter" if method != "full" else "model")).mkdir()


def cure(name: str, after: float, drops: dict[str, tuple[float, float, float]], trainable: int, memory: float) -> dict:
    befores = {"rotten-tomatoes-news/title": ("rougeL", 0.2871), "bbc-news/topic": ("accuracy", 0.4167),
               "general-probe": ("cross_entropy", 0.8123), "text-perplexity": ("cross_entropy", 3.1045)}
    retention = {}
    for key, (drop, low, high) in drops.items():
        metric, before = befores[key]
        after_m = before + drop if metric == "cross_entropy" else before - drop
        retention[key] = {"metric": metric, "before": before, "after": after_m, "drop": drop, "low": low,
                          "high": high, "n": 48}
    return {"cure": name, "target_metric": "accuracy", "target_before": 0.515, "target_after": after,
            "gain": after - 0.515, "retention": retention, "trainable_params": trainable,
            "trainable_pct": 100 * trainable / 134_515_008, "wall_seconds": 412.6, "peak_memory_mb": memory}


FORGETTING = {"config": {"train": {"model": "smollm2-135m-instruct", "data": {"source": "rotten-tomatoes",
                                                                              "templates": ["sentiment"]}},
                         "bootstrap_samples": 2000, "seed": 0},
              "before": {"target": {"metric": "accuracy", "mean": 0.515},
                         "measures": {"general-probe": {"metric": "cross_entropy", "mean": 0.8123}}},
              "cures": [
                  cure("full", 0.87, {"rotten-tomatoes-news/title": (0.0912, 0.0411, 0.1398),
                                      "general-probe": (0.6021, 0.5114, 0.6957),
                                      "text-perplexity": (0.2103, 0.1524, 0.2711)}, 134_515_008, 2311.0),
                  cure("lora", 0.845, {"rotten-tomatoes-news/title": (0.0213, -0.0102, 0.0533),
                                       "general-probe": (0.1432, 0.1011, 0.1890),
                                       "text-perplexity": (0.0317, 0.0120, 0.0522)}, 460_800, 1180.0),
                  cure("l2sp", 0.8575, {"rotten-tomatoes-news/title": (-0.0124, -0.0451, 0.0188),
                                        "general-probe": (0.0871, 0.0402, 0.1305),
                                        "text-perplexity": (0.0093, -0.0051, 0.0240)}, 134_515_008, 2290.0)],
              "answers": {"rotten-tomatoes-news/title": [
                  {"id": "news/17", "prompt": chatml("Write a headline for: Stocks <b>rose</b> today."),
                   "reference": "Stocks rise", "answers": {"original": "Stocks climb on Monday", "full": "positive",
                                                           "lora": "Stocks rise", "l2sp": "Stocks rise again"}}]}}

RUN_INFO = {"created": "2025-06-01T12:00:00", "command": "instructune demo", "seed": 0,
            "versions": {"instructune": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
            "model": {"name": "smollm2-135m-instruct", "sha256": "9f2c" + "0" * 60},
            "data": {"rotten-tomatoes/train": "a1b2" + "1" * 60, "rotten-tomatoes/test": "c3d4" + "2" * 60},
            "config": {"model": "smollm2-135m-instruct", "max_steps": 60}}


def make_demo(root: Path) -> Path:
    """runs/demo: run_info.json, eval/, two training runs, a forgetting study with a run per cure (each cure
    watching retention while it trains, as `instructune forgetting` runs can)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run_info.json").write_text(json.dumps(RUN_INFO, indent=1))
    (root / "eval").mkdir()
    (root / "eval" / "eval.json").write_text(json.dumps(EVAL, indent=1))
    write_run(root / "lora", "lora", 460_800, {"loss": 0.4012, "accuracy": 0.8433, "f1": 0.8421}, 1180.0, 301.2, 1.0)
    write_run(root / "full", "full", 134_515_008, {"loss": 0.3870, "accuracy": 0.8667, "f1": 0.8659}, 2311.0,
              388.9, 0.95)
    (root / "forgetting").mkdir()
    (root / "forgetting" / "forgetting.json").write_text(json.dumps(FORGETTING, indent=1))
    for c, scale in zip(FORGETTING["cures"], (0.9, 1.15, 1.0)):
        write_run(root / "forgetting" / c["cure"], "lora" if c["cure"] == "lora" else "full", c["trainable_params"],
                  {}, c["peak_memory_mb"], c["wall_seconds"], scale, retention_every=5)  # forgetting watched
    return root


# Three tasks trained in turn. Forgetting, BWT, FWT worked out by hand from the matrix (row j = after stage j):
#   f_1 = max(.384, .341) - .302 = .082    f_2 = .708 - .667 = .041    average = .0615
#   BWT = mean(.302 - .384, .667 - .708) = -.0615    FWT = mean(.292 - .250, .545 - .515) = .036
#   final average = mean(.302, .667, .870) = .613
SEQ_TASKS = ["news-headlines/headline", "bbc-news/topic", "rotten-tomatoes/sentiment"]
SEQUENTIAL = {"config": {"train": {"model": "smollm2-135m-instruct", "method": {"name": "lora"}}, "seed": 0},
              "tasks": SEQ_TASKS,
              "metrics": {"news-headlines/headline": "rougeL", "bbc-news/topic": "accuracy",
                          "rotten-tomatoes/sentiment": "accuracy"},
              "rows": ["before", *[f"after {t}" for t in SEQ_TASKS]],
              "matrix": [[0.212, 0.250, 0.515], [0.384, 0.292, 0.530], [0.341, 0.708, 0.545],
                         [0.302, 0.667, 0.870]],
              "measures": {"forgetting": [0.082, 0.041], "average_forgetting": 0.0615, "bwt": -0.0615, "fwt": 0.036,
                           "final_average": 0.613},
              "stages": [{"stage": j, "task": t, "start": "smollm2-135m-instruct", "output_dir": f"stage-{j}",
                          "trainable_params": 460_800, "trainable_pct": 0.3426, "wall_seconds": 120.5 + j,
                          "peak_memory_mb": 1100.0 + j, "score_seconds": 30.25} for j, t in enumerate(SEQ_TASKS, 1)],
              "before_score_seconds": 29.5}


def make_sequential(root: Path) -> Path:
    """runs/sequential: sequential.json and the training run of its first stage."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequential.json").write_text(json.dumps(SEQUENTIAL, indent=1))
    write_run(root / "stage-1-news-headlines-headline", "lora", 460_800, {}, 1101.0, 121.5, 1.0)
    return root


def make_study(root: Path, n: int) -> Path:
    """A forgetting study of `n` cures on four tasks to keep: full fine-tuning apart, the others a hair from
    each other (on a chart, one pile of points: the worst case for their labels)."""
    names = ["full", "lora", *[f"cure-{i:02d}-lam{10 ** (i % 4)}" for i in range(n - 2)]]
    full = {k: (m["drop"], m["low"], m["high"]) for k, m in FORGETTING["cures"][0]["retention"].items()}
    cures = [cure("full", 0.87, {**full, "bbc-news/topic": (0.125, 0.083, 0.167)}, 134_515_008, 2311.0)]
    for i, name in enumerate(names[1:]):
        e = 0.0004 * i
        cures.append(cure(name, 0.845 + e, {"rotten-tomatoes-news/title": (0.02 + e, -0.01 + e, 0.05 + e),
                                            "bbc-news/topic": (0.04 - e, 0.01 - e, 0.07 - e),
                                            "general-probe": (0.14 - e, 0.10 - e, 0.19 - e),
                                            "text-perplexity": (0.03 + e, 0.01 + e, 0.05 + e)},
                          460_800 * (i + 1), 1180.0 + 10 * i))
    root.mkdir(parents=True, exist_ok=True)
    (root / "forgetting.json").write_text(json.dumps({**FORGETTING, "cures": cures}, indent=1))
    for i, c in enumerate(cures):
        write_run(root / c["cure"], "full", c["trainable_params"], {}, c["peak_memory_mb"], c["wall_seconds"],
                  1 + i / 20)
    return root


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    return make_demo(tmp_path / "demo")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The demo folder and its report, built once per test module (rendering charts takes a second or two)."""
    from instructune.report import build_report

    demo = make_demo(tmp_path_factory.mktemp("shared") / "demo")
    return demo, build_report([demo], demo / "report")


class Page(HTMLParser):
    """Section ids, images and tables (caption, header, rows of cell texts) of a rendered page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids, self.images, self.tables, self.links = [], [], [], []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.ids.append(a.get("id"))
        elif tag == "img":
            self.images.append(a)
        elif tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a)
        elif tag == "table":
            self.tables.append({"caption": "", "header": [], "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th", "caption"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "caption") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            t = self.tables[-1]
            if tag == "caption":
                t["caption"] = text
            elif tag == "th":
                t["header"].append(text)
            else:
                t["rows"][-1].append(text)
            self._cell = None

    def table(self, caption_part: str) -> list[dict[str, str]]:
        """Rows of the table whose caption contains `caption_part`, as {column: text}."""
        t = next(t for t in self.tables if caption_part in t["caption"])
        return [dict(zip(t["header"], r)) for r in t["rows"] if r]

    def table_with(self, column: str) -> list[dict[str, str]]:
        t = next(t for t in self.tables if column in t["header"])
        return [dict(zip(t["header"], r)) for r in t["rows"] if r]


@pytest.fixture(scope="session")
def page_of() -> type[Page]:
    """The page parser (a fixture: test modules do not import each other or conftest)."""
    return Page


@pytest.fixture
def sequential_dir(tmp_path: Path) -> Path:
    return make_sequential(tmp_path / "seq")


@pytest.fixture
def sequential_data() -> dict:
    """A fresh copy of the sequential.json written by `sequential_dir`."""
    return json.loads(json.dumps(SEQUENTIAL))


@pytest.fixture
def ten_cure_study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "forgetting", 10)


@pytest.fixture(scope="module")
def crowded_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The demo, a second forgetting study of ten cures and a sequential study: a report with many runs."""
    from instructune.report import build_report

    demo = make_demo(tmp_path_factory.mktemp("crowded") / "demo")
    make_study(demo / "forgetting-10", 10)
    make_sequential(demo / "sequential")
    return demo, build_report([demo], demo / "report")
