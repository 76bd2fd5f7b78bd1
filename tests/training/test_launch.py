"""The README's multi-process commands on a CPU: torchrun starts the ranks it is asked for and only rank 0
prints; `accelerate launch`, which starts one process on a CPU, is named as such by the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    metrics: [accuracy]
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""


def config(tmp_path: Path, model: Path) -> Path:
    data, tpl = tmp_path / "reviews.jsonl", tmp_path / "t.yaml"
    data.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 else 'dull'} film {i}",
                                        "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(80)))
    tpl.write_text(TEMPLATES)
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump({
        "model": str(model), "output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 2, "eval_every": 0,
        "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood",
        "data": {"source": str(data), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                 "test_limit": 8}}))
    return f


@pytest.mark.slow
def test_torchrun_starts_two_ranks_and_prints_each_line_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    out = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "instructune",
                          "train", str(cfg)], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert "distributed: 2 processes (gloo on CPU)" in lines
    assert [line for line, n in Counter(lines).items() if n > 1] == []  # no rank printed what rank 0 printed
    assert any(line.startswith("done: ") for line in lines)


@pytest.mark.slow
def test_accelerate_launch_on_a_cpu_is_named_a_single_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    out = subprocess.run([str(BIN / "accelerate"), "launch", "--num_processes", "2", "-m", "instructune", "train",
                          str(cfg)], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "on a CPU it started one: this run is a single process" in out.stdout
    assert "torchrun --nproc_per_node 2" in out.stdout
