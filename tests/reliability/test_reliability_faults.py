"""Numerical and resource faults in training: NaN/inf, a full disk, out of memory, unreadable checkpoints.

Each fault is injected in-process on a tiny model (a monkeypatched loss, `save_file` or
`torch.save`), and each test checks both the message and what is left on disk.
"""

from __future__ import annotations

import errno
import json
import math
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.training import checkpoint as ckpt
from instructune.training import loop
from instructune.training.config import TrainConfig
from instructune.training.trainer import train

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: "Review: {{ text }}\\nPositive or negative?"
"""
WORDS = {"pos": ["great", "wonderful", "good", "moving", "funny"], "neg": ["dull", "terrible", "bad", "boring"]}


def quiet(*_: object) -> None:
    pass


def config(tmp_path: Path, model: Path, **over: object) -> TrainConfig:
    """12 LoRA steps of batch 8 on 96 toy reviews, a checkpoint every `save_every` steps."""
    rng = random.Random(0)
    rows = [{"id": f"r{i:03d}", "text": f"a {' and '.join(rng.sample(WORDS[lab], 2))} film {i}", "label": lab}
            for i in range(120) for lab in ["pos" if i % 2 else "neg"]]
    data, tpl = tmp_path / "reviews.jsonl", tmp_path / "templates.yaml"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tpl.write_text(TEMPLATES)
    base = {"model": model, "output_dir": tmp_path / "run", "data.source": data, "data.template_file": tpl,
            "data.templates": "[mood]", "data.val_limit": 8, "data.test_limit": 8, "batch_size": 8, "max_steps": 12,
            "eval_every": 0, "save_every": 1, "keep_checkpoints": 3, "log_every": 1, "optim.lr": 1e-2,
            "optim.warmup_steps": 2, "method.name": "lora", "method.dropout": 0.1, "eval_mode": "likelihood"}
    if over.get("method.name", "lora") != "lora":
        del base["method.dropout"]  # a LoRA option: refused for another method
    return load_config(TrainConfig, None, [f"{k}={v}" for k, v in {**base, **over}.items()])


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint-*"))


def assert_loadable(path: Path) -> dict[str, torch.Tensor]:
    """A complete checkpoint: finite weights, an optimiser state torch.load accepts safely, its step."""
    weights = load_file(str(path / "trainable.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    blob = torch.load(path / "optim.pt", weights_only=True)
    assert {"optimizer", "scheduler", "torch_rng"} <= set(blob)
    assert json.loads((path / "trainer_state.json").read_text())["step"] == int(path.name.split("-")[1])
    return weights


def poison(monkeypatch: pytest.MonkeyPatch, at: set[int], how: str = "loss") -> list[list[str]]:
    """Make training forward number `at` give a NaN loss (or a NaN gradient with a finite loss).

    Returns the example ids of every training micro-batch, in order, as the loop collated them.
    """
    real_loss, real_collate = loop.completion_loss_sum, loop.collate
    calls, batches = [0], []

    def collate(rows: list[dict], pad_id: int) -> dict:
        batches.append([r["id"] for r in rows])
        return real_collate(rows, pad_id)

    def loss(model: torch.nn.Module, batch: dict, only: bool) -> torch.Tensor:
        ce = real_loss(model, batch, only)
        if not torch.is_grad_enabled():  # validation: untouched
            return ce
        calls[0] += 1
        if calls[0] not in at:
            return ce
        if how == "loss":
            return ce * float("nan")
        p = next(p for p in model.parameters() if p.requires_grad)
        return ce + 0.0 * torch.sqrt(p.sum() * 0.0)  # forward: + 0; backward: 0 * inf = NaN

    monkeypatch.setattr(loop, "collate", collate)
    monkeypatch.setattr(loop, "completion_loss_sum", loss)
    return batches


# --- numerical faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_nan_stops_with_step_and_batch_ids_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    batches = poison(monkeypatch, at={5}, how=how)
    with pytest.raises(InstructuneError) as err:
        train(cfg, log=quiet)
    message = str(err.value)
    assert "non-finite loss or gradient at step 5" in message and "skip_bad_batches=true" in message
    assert str(batches[4][:8]) in message and len(batches[4]) == 8  # the 5th micro-batch's example ids
    assert f"Last good checkpoint: {cfg.output_dir / 'checkpoint-00000004'}" in message
    assert checkpoints(cfg.output_dir) == ["checkpoint-00000002", "checkpoint-00000003", "checkpoint-00000004"]
    assert_loadable(cfg.output_dir / "checkpoint-00000004")
    assert not list(cfg.output_dir.glob(".tmp-*")) and not (cfg.output_dir / "metrics.json").exists()


def test_huge_learning_rate_really_diverges_and_is_caught(tmp_path: Path, tiny_model_dir: Path) -> None:
    """No injection: lr=1e10 overflows the weights within a few steps, and the run says so."""
    cfg = config(tmp_path, tiny_model_dir, **{"optim.lr": 1e10, "optim.warmup_steps": 0, "method.name": "full",
                                              "optim.max_grad_norm": 0})
    with pytest.raises(InstructuneError, match=r"non-finite loss or gradient at step (\d+)") as err:
        train(cfg, log=quiet)
    step = int(err.value.args[0].split("at step ")[1].split()[0])
    assert 2 <= step <= 12
    kept = checkpoints(cfg.output_dir)
    assert kept[-1] == f"checkpoint-{step - 1:08d}"  # every finished step before the bad one was saved


def test_skip_bad_batches_counts_them(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, tiny_model_dir, skip_bad_batches="true", save_every=0)
    poison(monkeypatch, at={3, 7})
    metrics = train(cfg, log=quiet).metrics
    saved = json.loads((cfg.output_dir / "metrics.json").read_text())
    assert saved["skipped_batches"] == metrics["skipped_batches"] == 2
    assert saved["steps"] == 12 and math.isfinite(saved["validation"]["loss"])
    assert_loadable(cfg.output_dir / "checkpoint-00000012")


# --- out of disk ----------------------------------------------------------------------------------

def full_disk_on_call(n: int, real: object, partial: bool = False) -> object:
    """A writer that works n - 1 times, then fails with ENOSPC (after writing half a file, if `partial`)."""
    calls = [0]

    def write(obj: object, path: object, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == n:
            if partial:
                Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path, *args, **kwargs)
    return write


@pytest.mark.parametrize("where", ["weights", "optimizer"])
def test_full_disk_while_checkpointing_keeps_the_previous_one(tmp_path: Path, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    cfg = config(tmp_path, tiny_model_dir)
    if where == "weights":
        monkeypatch.setattr(ckpt, "save_file", full_disk_on_call(6, ckpt.save_file))
    else:
        monkeypatch.setattr(torch, "save", full_disk_on_call(6, torch.save, partial=True))
    with pytest.raises(InstructuneError) as err:
        train(cfg, log=quiet)
    message, run = str(err.value), cfg.output_dir
    assert f"could not write checkpoint {run / 'checkpoint-00000006'} (No space left on device)" in message
    assert "the previous checkpoint checkpoint-00000005 is intact" in message and "--resume" in message
    assert checkpoints(run)[-1] == "checkpoint-00000005" and not list(run.glob(".tmp-*"))
    before = assert_loadable(run / "checkpoint-00000005")
    # space is back: resuming continues from step 5 and reaches the end
    monkeypatch.undo()
    train(cfg, resume=True, log=quiet)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 12
    after = assert_loadable(run / "checkpoint-00000012")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_full_disk_while_saving_best_weights(tmp_path: Path, tiny_model_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    cfg = config(tmp_path, tiny_model_dir, eval_every=2)
    # best/ is written whenever validation improves (checked every 2 steps); the disk fills at its second write
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_on_call(2, safetensors.torch.save_file))
    with pytest.raises(InstructuneError, match=r"could not write the best weights .*No space left on device") as err:
        train(cfg, log=quiet)
    kept = json.loads((cfg.output_dir / "best" / "scores.json").read_text())["step"]
    assert f"best/ (step {kept}) is intact" in str(err.value) and "--resume" in str(err.value)
    assert load_file(str(cfg.output_dir / "best" / "trainable.safetensors"))
    assert not list(cfg.output_dir.glob(".tmp-*"))


# --- out of memory --------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 21474836480 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_out_of_memory_names_the_knobs(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                       error: BaseException) -> None:
    cfg = config(tmp_path, tiny_model_dir, **{"method.name": "full"})
    real, calls = loop.completion_loss_sum, [0]

    def loss(*args: object) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 4:
            raise error
        return real(*args)
    monkeypatch.setattr(loop, "completion_loss_sum", loss)
    with pytest.raises(InstructuneError) as err:
        train(cfg, log=quiet)
    message = str(err.value)
    assert message.startswith("out of memory")
    for knob in ("batch_size=4 grad_accum=2", "gradient_checkpointing=true", "method.name=lora", "precision=bf16",
                 "data.max_length="):
        assert knob in message, knob
    assert "checkpoint-00000003" in message and "--resume" in message


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path: Path, tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, tiny_model_dir)

    def loss(*args: object) -> torch.Tensor:
        raise RuntimeError("shape mismatch")
    monkeypatch.setattr(loop, "completion_loss_sum", loss)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(cfg, log=quiet)


# --- unreadable checkpoints -----------------------------------------------------------------------

class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage", ["trojan optim.pt", "truncated weights", "bad trainer state"])
def test_unreadable_checkpoint_is_refused_clearly(tmp_path: Path, tiny_model_dir: Path, damage: str) -> None:
    """--resume from a damaged or malicious checkpoint: a clear error naming it, and no pickled code runs."""
    cfg = config(tmp_path, tiny_model_dir, max_steps=2)
    train(cfg, log=quiet)
    last, marker = cfg.output_dir / "checkpoint-00000002", tmp_path / "pwned"
    if damage == "trojan optim.pt":
        (last / "optim.pt").write_bytes(pickle.dumps({"optimizer": Payload(marker)}))
    elif damage == "truncated weights":
        f = last / "trainable.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    else:
        (last / "trainer_state.json").write_text('{"step": 2, ')
    with pytest.raises(InstructuneError, match=r"checkpoint-00000002 cannot be read .*delete that folder"):
        train(cfg, resume=True, log=quiet)
    assert not marker.exists()
