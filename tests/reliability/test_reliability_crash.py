"""Crash safety: a training run killed at random points and resumed ends with the uninterrupted run's weights.

One run of `instructune train` (24 LoRA steps over two epochs, a checkpoint every step, best
weights every 6) is interrupted ten times, each time at a seeded random step, then resumed
with `--resume`:

- SIGKILL from outside, a random few ms after the log shows the chosen step (mid-step or mid-save);
- SIGKILL from inside `save_checkpoint` at fixed points of a write: after the first file, in the
  middle of a file (torn), with every file written but before the rename, after the rename but
  before older checkpoints are pruned, and halfway through deleting an old checkpoint. The child
  installs these as wrappers around `checkpoint.save_file` / `_fsync` / `shutil` before running
  the CLI: the package has no test hook;
- SIGTERM and SIGINT, which must stop cleanly: exit code 143 / 130 (so `train && next` stops), a
  checkpoint of the step reached.

After every interruption each `checkpoint-*` folder must load; at the end no `.tmp-*` folder is
left, every replayed step logged the reference's loss, and the last checkpoint, best/ and the
test scores equal those of one uninterrupted `python -m instructune train` run exactly.

Each run is forked from a helper process that has already imported torch and transformers
(about 6 s per fresh interpreter here), so ten runs fit in well under a minute.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from instructune.training.checkpoint import latest_checkpoint

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""
WORDS = {"pos": ["great", "wonderful", "good", "moving", "funny"], "neg": ["dull", "terrible", "bad", "boring"]}
STEPS = 24
# What interrupts each run, in order; every kind happens at a different, seeded random step.
PLAN = ["after-weights", "sigkill", "before-rename", "sigterm", "torn-file", "sigkill", "after-rename", "sigint",
        "mid-prune", "sigkill"]
IN_SAVE = {"after-weights", "torn-file", "before-rename", "after-rename", "mid-prune"}

# Forks one `python -m instructune` per line of stdin ({"argv", "log", "hook", "step"}); prints the child's pid,
# then its exit code (negative: killed by that signal). `hook` makes the child SIGKILL itself inside the write
# of checkpoint `step`.
ZYGOTE = r'''
import json, os, runpy, shutil, signal, sys
from pathlib import Path
from types import SimpleNamespace
import torch, transformers, peft, accelerate, safetensors.torch, torch.utils.tensorboard  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401
import instructune.cli, instructune.training.trainer, instructune.training.run_data, instructune.methods  # noqa
from instructune.training import checkpoint


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def install(hook, step):
    tmp_name = f".tmp-checkpoint-{step:08d}"
    real_save, real_fsync = checkpoint.save_file, checkpoint._fsync

    def save_file(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        if tmp_name in str(filename):
            if hook == "torn-file":
                with open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
            die()

    def fsync(path):
        path = Path(path)
        if hook == "before-rename" and path.parent.name == tmp_name:
            die()  # every file written, none renamed
        real_fsync(path)
        if hook == "after-rename" and (path / f"checkpoint-{step:08d}").is_dir():
            die()  # renamed, older checkpoints not yet pruned

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        done = (path.parent / f"checkpoint-{step:08d}").is_dir()  # pruning after checkpoint `step` was written
        if done and path.name != tmp_name and "checkpoint-" in path.name and path.is_dir() and os.listdir(path):
            os.unlink(path / sorted(os.listdir(path))[0])
            die()  # an old checkpoint half deleted
        shutil.rmtree(path, *args, **kwargs)

    if hook in ("after-weights", "torn-file"):
        checkpoint.save_file = save_file
    elif hook == "mid-prune":
        checkpoint.shutil = SimpleNamespace(rmtree=rmtree)
    else:
        checkpoint._fsync = fsync


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if job.get("hook"):
            install(job["hook"], job["step"])
        sys.argv = ["instructune", *job["argv"]]
        code = 0
        try:
            runpy.run_module("instructune", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''


def write_config(folder: Path, model: Path) -> Path:
    rng = random.Random(0)
    rows = [{"id": f"r{i:03d}", "text": f"a {' and '.join(rng.sample(WORDS[lab], 2))} film {i}", "label": lab}
            for i in range(120) for lab in ["pos" if i % 2 else "neg"]]
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "templates.yaml").write_text(TEMPLATES)
    cfg = {"model": str(model), "batch_size": 8, "max_steps": STEPS, "eval_every": 6, "save_every": 1,
           "keep_checkpoints": 2, "log_every": 1, "eval_mode": "likelihood",
           "optim": {"lr": 1e-2, "warmup_steps": 2}, "method": {"name": "lora", "dropout": 0.1},
           "data": {"source": str(folder / "reviews.jsonl"), "template_file": str(folder / "templates.yaml"),
                    "templates": ["mood"], "val_limit": 8, "test_limit": 8}}
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Runner:
    """Runs `instructune ARGV` as forks of a warm interpreter; the test process may signal each child."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.logs, self.count = logs, 0

    def start(self, argv: list[str], hook: str | None = None, step: int = 0) -> int:
        self.count += 1
        job = {"argv": argv, "log": str(self.logs / f"run{self.count}.log"), "hook": hook, "step": step}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return int(self.lines.get(timeout=120))

    def wait(self) -> int:
        return int(self.lines.get(timeout=120))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def logged_steps(log: Path, offset: int) -> list[int]:
    if not log.exists():
        return []
    with open(log) as f:
        f.seek(offset)
        return [json.loads(line)["step"] for line in f.read().splitlines() if '"loss"' in line]


def wait_for_step(log: Path, offset: int, step: int, deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    while not any(s >= step for s in logged_steps(log, offset)):
        assert time.monotonic() < end, f"step {step} never logged"
        time.sleep(0.003)


def check_checkpoints(run: Path) -> None:
    """Every checkpoint folder is complete and loadable; the newest is what --resume will take."""
    found = sorted(run.glob("checkpoint-*"))
    for path in found:
        weights = load_file(str(path / "trainable.safetensors"))
        assert weights and all(torch.isfinite(t).all() for t in weights.values())
        blob = torch.load(path / "optim.pt", weights_only=True)
        assert {"optimizer", "scheduler", "torch_rng"} <= set(blob)
        assert json.loads((path / "trainer_state.json").read_text())["step"] == int(path.name.split("-")[1])
    assert latest_checkpoint(run) == (found[-1] if found else None)


def step_losses(run: Path) -> dict[int, set[float]]:
    """Every loss logged for each step (a replayed step logs again)."""
    out: dict[int, set[float]] = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out.setdefault(row["step"], set()).add(row["loss"])
    return out


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(tmp_path, tiny_model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref_dir, run = tmp_path / "reference", tmp_path / "run"
    reference = subprocess.Popen([sys.executable, "-m", "instructune", "train", str(cfg), f"output_dir={ref_dir}"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runner = Runner(env, tmp_path)
    argv = ["train", str(cfg), f"output_dir={run}"]
    rng = random.Random(20240607)
    targets = [2 + 2 * i + rng.randint(0, 1) for i in range(len(PLAN))]
    try:
        for kind, target in zip(PLAN, targets):
            log = run / "train_log.jsonl"
            offset = log.stat().st_size if log.exists() else 0
            last = latest_checkpoint(run) if run.exists() else None
            step = max(target, int(last.name.split("-")[1]) + 1 if last else 1)  # one this run will really reach
            resume = ["--resume"] if run.exists() else []
            pid = runner.start(argv + resume, kind if kind in IN_SAVE else None, step)
            if kind not in IN_SAVE:
                wait_for_step(log, offset, step)
                time.sleep(rng.uniform(0, 0.04))  # land anywhere in the next step: forward, backward or a save
                os.kill(pid, {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[kind])
            code = runner.wait()
            if kind in ("sigterm", "sigint"):  # a clean stop: 143 / 130, as a pre-empted job, and a checkpoint
                stopped = max(logged_steps(log, offset))
                assert code == {"sigterm": 143, "sigint": 130}[kind], \
                    (runner.logs / f"run{runner.count}.log").read_text()[-2000:]
                assert f"stopped by signal {kind.upper()} at step {stopped}" in \
                    (runner.logs / f"run{runner.count}.log").read_text()
                assert latest_checkpoint(run).name == f"checkpoint-{stopped:08d}"
            else:
                assert code == -signal.SIGKILL, (kind, step, code)
            if kind in ("after-weights", "torn-file", "before-rename"):  # the write really was cut short
                assert (run / f".tmp-checkpoint-{step:08d}").is_dir()
                assert latest_checkpoint(run).name < f"checkpoint-{step:08d}"
            if kind in ("after-rename", "mid-prune"):  # the new checkpoint was complete
                assert latest_checkpoint(run).name == f"checkpoint-{step:08d}"
            check_checkpoints(run)
        assert runner.start(argv + ["--resume"]) and runner.wait() == 0
    finally:
        runner.close()
        _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-2000:]

    assert not list(run.glob(".tmp-*")) and len(list(run.glob("checkpoint-*"))) == 2
    check_checkpoints(run)
    losses, want = step_losses(run), step_losses(ref_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(losses[s] == want[s] for s in want), "a replayed step logged another loss"
    for name in (f"checkpoint-{STEPS:08d}/trainable.safetensors", "best/trainable.safetensors"):
        got, ref = load_file(str(run / name)), load_file(str(ref_dir / name))
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), name
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, ref_dir))
    assert metrics["steps"] == STEPS and metrics["test"] == ref_metrics["test"]
    assert metrics["validation"] == ref_metrics["validation"]
