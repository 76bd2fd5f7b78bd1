"""A demo-shaped run folder written by hand: the files `train`, `eval`, `forgetting` and `demo` write."""

from __future__ import annotations

import json
import math
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


def train_log(scale: float) -> str:
    lines = [{"step": s, "loss": scale * (2.5 * math.exp(-s / 12) + 0.35), "lr": 2e-4, "tokens_per_s": 1800.0,
              "epoch": 0} for s in [1, *range(5, 61, 5)]]
    lines += [{"step": s, "val_loss": scale * (2.2 * math.exp(-s / 15) + 0.4), "val_accuracy": 0.5 + s / 150}
              for s in (20, 40, 60)]
    lines.sort(key=lambda r: (r["step"], "val_loss" in r))
    return "".join(json.dumps(r) + "\n" for r in lines)


def write_run(folder: Path, method: str, trainable: int, test: dict, memory: float, wall: float, scale: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics(method, trainable, test, memory, wall), indent=2))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", "seed": 0,
                                                        "method": {"name": method, "r": 8},
                                                        "data": {"source": "rotten-tomatoes"},
                                                        "optim": {"lr": 2e-4}}))
    (folder / "train_log.jsonl").write_text(train_log(scale))
    (folder / ("adapter" if method != "full" else "model")).mkdir()


def cure(name: str, after: float, drops: dict[str, tuple[float, float, float]], trainable: int, memory: float) -> dict:
    befores = {"rotten-tomatoes-news/title": ("rougeL", 0.2871), "general-probe": ("cross_entropy", 0.8123),
               "text-perplexity": ("cross_entropy", 3.1045)}
    retention = {}
    for key, (metric, before) in befores.items():
        drop, low, high = drops[key]
        after_m = before - drop if metric == "rougeL" else before + drop
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
                                        "text-perplexity": (0.0093, -0.0051, 0.0240)}, 134_515_008, 2290.0)]}

RUN_INFO = {"created": "2025-06-01T12:00:00", "command": "instructune demo", "seed": 0,
            "versions": {"instructune": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
            "model": {"name": "smollm2-135m-instruct", "sha256": "9f2c" + "0" * 60},
            "data": {"rotten-tomatoes/train": "a1b2" + "1" * 60, "rotten-tomatoes/test": "c3d4" + "2" * 60},
            "config": {"model": "smollm2-135m-instruct", "max_steps": 60}}


def make_demo(root: Path) -> Path:
    """runs/demo: run_info.json, eval/, two training runs, a forgetting study with a run per cure."""
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
                  {}, c["peak_memory_mb"], c["wall_seconds"], scale)
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
