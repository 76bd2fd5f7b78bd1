"""`instructune sequential` end to end on a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.recipes.sequential import SequentialConfig, sequential, stage_configs

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads(tmp_path: Path) -> None:
    cfg = load_config(SequentialConfig, REPO / "configs" / "sequential-news.yaml")
    runs = stage_configs(cfg, tmp_path)
    assert [r.data.task.source for r in runs] == ["rotten-tomatoes", "bbc-news", "news-headlines"]
    assert [r.eval_mode for r in runs] == ["likelihood", "likelihood", "generate"]
    assert runs[0].model == "smollm2-135m-instruct"
    assert runs[1].model == str(tmp_path / "stage-1-rotten-tomatoes-sentiment" / "merged")  # LoRA: merged start
    assert runs[2].model == str(tmp_path / "stage-2-bbc-news-topic" / "merged")
    assert {(r.method.name, r.method.options.r, r.optim.lr, r.loop.max_steps, r.precision) for r in runs} == {
        ("lora", 16, 5e-4, 30, "auto")}


def test_config_problems_reported_together(tmp_path: Path) -> None:
    task = {"source": "rotten-tomatoes", "template": "sentiment"}
    cfg = load_config(SequentialConfig, data={"train": {"method": {"name": "prompt_tuning"}, "mixture": {"tasks": []}},
                                              "tasks": [task, task]})
    with pytest.raises(InstructuneError) as e:
        stage_configs(cfg, tmp_path)
    for problem in ("listed more than once", "remove the mixture", "cannot be merged"):
        assert problem in str(e.value)


def toy_config(tmp_path: Path, model: Path, method: dict, toy_tasks: tuple[Path, Path, Path]) -> SequentialConfig:
    reviews, news, tpl = toy_tasks
    train = {"model": str(model), "method": method, "batch_size": 4, "max_steps": 3, "eval_every": 0,
             "save_every": 0, "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
             "data": {"val_limit": 4}}
    tasks = [{"source": str(reviews), "template": "mood", "mode": "likelihood", "limit": 6, "template_file": str(tpl)},
             {"source": str(news), "template": "title", "mode": "generate", "limit": 4, "template_file": str(tpl)}]
    return load_config(SequentialConfig, data={"train": train, "tasks": tasks, "output_dir": str(tmp_path / "seq")})


def weight(folder: Path | str, key: str = "model.layers.0.self_attn.q_proj.weight") -> object:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))[key]


@pytest.mark.slow
def test_sequential_full_fine_tuning(tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path]) -> None:
    import torch

    from instructune.data.task import SplitSpec, load_split, templates
    from instructune.evaluation.evaluate import select
    from instructune.forgetting.measures import task_scores
    from instructune.models import load_model

    cfg = toy_config(tmp_path, tiny_model_dir, {"name": "full"}, toy_tasks)
    report = sequential(cfg, log=lambda *_: None)
    names = ["reviews/mood", "news/title"]
    assert report["tasks"] == names and report["rows"] == ["before", "after reviews/mood", "after news/title"]
    assert [len(row) for row in report["matrix"]] == [2, 2, 2]  # T + 1 rows x T columns
    assert report["metrics"] == {"reviews/mood": "accuracy", "news/title": "rougeL"}

    # row 0 is the untrained model, scored directly on the same fixed test examples
    model, tok = load_model(str(tiny_model_dir))
    for i, task in enumerate(cfg.tasks):
        split = SplitSpec(0, [0.8, 0.1, 0.1])
        recs = select(load_split(task.task_spec(), split, "test", task.template), task.limit, cfg.seed)
        _, scores, _ = task_scores(model, tok, recs, templates(task.task_spec(), split)[task.template], task.mode)
        assert report["matrix"][0][i] == pytest.approx(sum(scores) / len(scores))

    # stage 2 started from the weights stage 1 saved, which training had moved away from the original
    stage1, stage2 = tmp_path / "seq" / "stage-1-reviews-mood", tmp_path / "seq" / "stage-2-news-title"
    start = json.loads((stage2 / "metrics.json").read_text())["model"]
    assert start == yaml.safe_load((stage2 / "config.yaml").read_text())["model"] == str(stage1 / "model")
    assert torch.equal(weight(start), weight(stage1 / "model"))
    assert not torch.allclose(weight(start), weight(tiny_model_dir))
    assert not torch.allclose(weight(stage2 / "model"), weight(stage1 / "model"))

    saved = json.loads((tmp_path / "seq" / "sequential.json").read_text())
    assert saved["matrix"] == report["matrix"] and set(saved["measures"]) >= {"forgetting", "bwt", "fwt"}
    assert [s["stage"] for s in saved["stages"]] == [1, 2] and all(s["trainable_params"] > 0 for s in saved["stages"])
    table = (tmp_path / "seq" / "sequential.md").read_text()
    assert "| after reviews/mood |" in table and "BWT" in table and "FWT" in table

    # a rerun trains nothing and scores nothing: every stage and row is reused
    stamps = {p: p.stat().st_mtime_ns for p in (stage1 / "metrics.json", stage2 / "metrics.json")}
    logs: list[str] = []
    again = sequential(cfg, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(logs) == 2 + 3 and all(line.startswith("reusing") for line in logs)  # 2 trainings, 3 score rows
    assert again["matrix"] == report["matrix"]

    # stage 1 trained again (same config, new weights): stage 2 no longer starts where it did, so it retrains
    shutil.rmtree(stage1)
    logs.clear()
    sequential(cfg, log=logs.append)
    assert (stage2 / "metrics.json").stat().st_mtime_ns != stamps[stage2 / "metrics.json"]
    assert any("training it again" in line for line in logs)


@pytest.mark.slow
def test_sequential_lora_starts_from_the_merged_model(tmp_path: Path, tiny_model_dir: Path,
                                                      toy_tasks: tuple[Path, Path, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    method = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
    report = sequential(toy_config(tmp_path, tiny_model_dir, method, toy_tasks), log=lambda *_: None)
    assert [len(row) for row in report["matrix"]] == [2, 2, 2]
    stage1, stage2 = tmp_path / "seq" / "stage-1-reviews-mood", tmp_path / "seq" / "stage-2-news-title"
    start = json.loads((stage2 / "metrics.json").read_text())["model"]
    assert start == str(stage1 / "merged")
    # the merged model is the original plus stage 1's update: W + (alpha / r) B A
    lora = load_file(str(stage1 / "adapter" / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    update = (8 / 4) * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]  # (out, in)
    assert update.abs().max() > 1e-4  # stage 1 moved the adapter off its zero start
    torch.testing.assert_close(weight(start), weight(tiny_model_dir) + update, rtol=0, atol=1e-6)
    assert (stage2 / "merged" / "model.safetensors").exists()  # the last stage's model, the one scored
