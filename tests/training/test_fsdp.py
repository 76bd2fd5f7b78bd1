"""FSDP2 on CPU: the engine's checkpoints and saved model under real torch sharding, 2 gloo processes.

Accelerate 1.15 turns FSDP on for GPU-like devices only: on CPU an FSDP launch config runs DDP
(the trainer says so). So this test shards the tiny model itself with torch's `fully_shard`
(each decoder layer, then the root, as Accelerate's FSDP2 does) and runs the engine on it: the
real `train_loop` (with an `Accelerator(cpu=True)` for its reductions; the model is not passed to
`accelerator.prepare`, which would wrap it in DDP), `restore` from a checkpoint into a freshly
sharded model, and the recipe's `_save_output` (full model and LoRA adapter). What it does not
run is `instructune train` itself with Accelerate doing the sharding: that needs GPUs.

This file is also the worker: `torchrun ... test_fsdp.py TINY_MODEL_DIR OUT_DIR fsdp|plain`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

STEPS, EVAL_EVERY = 4, 2
PROBE = [[5, 17, 42, 99, 7, 256, 300, 11]]


def examples(n: int = 32) -> list[dict[str, list[int]]]:
    """Token rows of 8-12 tokens whose second half is the completion."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(3, 400, (8 + i % 5,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (len(ids) // 2) + ids[len(ids) // 2:]})
    return rows


def settings() -> Any:
    from instructune.training.config import LoopConfig
    from instructune.training.loop import LoopSettings

    loop = LoopConfig(batch_size=4, grad_accum=2, group_by_length=False, eval_every=EVAL_EVERY, save_every=2,
                      keep_checkpoints=3, log_every=1, early_stopping_patience=0, skip_bad_batches=False)
    return LoopSettings(loop, total_steps=STEPS, seed=0, max_grad_norm=1.0, only_completion_logits=True)


def losses(run: Path) -> dict[int, float]:
    """Training loss by step, from the run's train_log.jsonl."""
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


class Run:
    """One process's share of the test: the tiny model, the data, and the engine's loop around them."""

    def __init__(self, tiny: Path, shard: bool) -> None:
        from accelerate import Accelerator
        from torch.distributed.device_mesh import init_device_mesh
        from transformers import AutoTokenizer

        self.accelerator = Accelerator(cpu=True)  # MULTI_CPU under torchrun: gloo, the loop's reductions
        self.mesh = init_device_mesh("cpu", (self.accelerator.num_processes,)) if shard else None
        self.tiny, self.tok = tiny, AutoTokenizer.from_pretrained(tiny)
        self.train, self.val = examples(), examples(8)

    def fresh(self, lora: bool = False) -> tuple[Any, Any, Any]:
        """The tiny model (with instructune's LoRA, if asked), sharded like Accelerate's FSDP2 (each decoder
        layer, then the root), its optimiser (wrapped by Accelerate, as in the recipe) and schedule."""
        from torch.distributed.fsdp import fully_shard
        from transformers import AutoModelForCausalLM, get_scheduler

        from instructune.methods import METHODS
        from instructune.training.setup import adamw

        model = AutoModelForCausalLM.from_pretrained(self.tiny)
        layers = model.model.layers
        if lora:
            model = METHODS["lora"](model, dropout=0.0)
        if self.mesh is not None:
            for layer in layers:
                fully_shard(layer, mesh=self.mesh)
            fully_shard(model, mesh=self.mesh)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.accelerator.prepare_optimizer(adamw(params, lr=1e-2))  # the engine's
        return model, optimizer, get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=STEPS)

    def loop(self, model: Any, optimizer: Any, scheduler: Any, run: Path, state: Any = None) -> None:
        from instructune.training.batching import epoch_batches, validation_loss
        from instructune.training.loop import train_loop

        lengths, pad = [len(e["input_ids"]) for e in self.train], self.tok.pad_token_id
        run.mkdir(parents=True, exist_ok=True)
        train_loop(model, optimizer, scheduler, self.accelerator, self.train, pad, settings(), run,
                   lambda m: {"loss": validation_loss(m, self.val, pad)},
                   lambda epoch: epoch_batches(lengths, 4, 0, epoch, False), state=state)


def gathered(model: Any) -> dict[str, torch.Tensor]:
    """Full copies of the sharded parameters (a collective: every rank)."""
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def worker(tiny: Path, out: Path, shard: bool) -> None:
    """Sharded: train 4 steps, save the model, resume a fresh sharded model from step 2, train LoRA and save
    the adapter; rank 0 writes the numbers to results.json. Not sharded (one process): reference losses only."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from instructune.training.loop import restore
    from instructune.training.run_dir import save_output

    r = Run(tiny, shard)
    model, optimizer, scheduler = r.fresh()
    if not shard:
        r.loop(model, optimizer, scheduler, out / "plain")
        return
    # the uninterrupted run: checkpoints at steps 2 and 4, best/, then model/
    local = {n: list(p.to_local().shape) for n, p in model.named_parameters()}
    r.loop(model, optimizer, scheduler, out / "full")
    full = gathered(model)
    save_output(model, r.tok, out / "full", peft=False)
    probe = torch.tensor(PROBE)
    with torch.no_grad():
        sharded_logits = model(input_ids=probe).logits
    # a fresh sharded model restored from step 2 continues to step 4
    model, optimizer, scheduler = r.fresh()
    state = restore(out / "full" / "checkpoint-00000002", model, optimizer, scheduler, [])
    restored_step, restored = state.step, gathered(model)
    moments = {n: optimizer.state[p]["exp_avg"].full_tensor() for n, p in model.named_parameters()}
    r.loop(model, optimizer, scheduler, out / "resumed", state)
    resumed = gathered(model)
    # LoRA: only the adapter trains; adapter/ is written from the sharded model
    model, optimizer, scheduler = r.fresh(lora=True)
    r.loop(model, optimizer, scheduler, out / "lora")
    lora = {n: t for n, t in gathered(model).items() if "lora_" in n}
    save_output(model, r.tok, out / "lora", peft=True)
    with torch.no_grad():
        lora_logits = model(input_ids=probe).logits
    if not r.accelerator.is_main_process:
        return

    step2, step4 = (load_file(str(out / "full" / f"checkpoint-0000000{s}" / "trainable.safetensors")) for s in (2, 4))
    optim2 = torch.load(out / "full" / "checkpoint-00000002" / "optim.pt", weights_only=True)["optimizer"]
    best = load_file(str(out / "full" / "best" / "trainable.safetensors"))
    lora_saved = load_file(str(out / "lora" / "checkpoint-00000004" / "trainable.safetensors"))
    with torch.no_grad():
        hf_logits = AutoModelForCausalLM.from_pretrained(out / "full" / "model")(input_ids=probe).logits
        base = AutoModelForCausalLM.from_pretrained(tiny)
        peft_logits = PeftModel.from_pretrained(base, out / "lora" / "adapter")(input_ids=probe).logits
    (out / "results.json").write_text(json.dumps({
        "processes": r.accelerator.num_processes, "names": sorted(full), "saved_names": sorted(step4),
        "best_names": sorted(best), "local_shapes": local, "full_shapes": {n: list(t.shape) for n, t in full.items()},
        "saved_shapes": {n: list(t.shape) for n, t in step4.items()},
        "saved_vs_gathered": diff(step4, full), "best_vs_gathered": diff(best, full),
        "restored_step": restored_step, "restored_vs_checkpoint": diff(step2, restored),
        "moments_vs_checkpoint": diff({n: optim2["state"][n]["exp_avg"] for n in moments}, moments),
        "moments_nonzero": all(bool(m.abs().sum() > 0) for m in moments.values()),
        "moved_since_step2": diff(full, step2), "resumed_vs_full": diff(resumed, full),
        "logits_hf_vs_sharded": float((hf_logits - sharded_logits).abs().max()),
        "lora_names": sorted(lora), "lora_saved_names": sorted(lora_saved), "lora_vs_gathered": diff(lora_saved, lora),
        "lora_shapes": {n: list(t.shape) for n, t in lora_saved.items()},
        "lora_b_max": max(float(t.abs().max()) for n, t in lora_saved.items() if "lora_B" in n),
        "logits_peft_vs_sharded": float((peft_logits - lora_logits).abs().max()),
    }))


def torchrun(procs: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(procs), *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_checkpoints_resume_and_saved_model_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    """torchrun, 2 CPU processes (gloo), a full fine-tune sharded by torch `fully_shard`; 1 unsharded for reference."""
    torchrun(2, __file__, str(tiny_model_dir), str(tmp_path), "fsdp")
    torchrun(1, __file__, str(tiny_model_dir), str(tmp_path), "plain")
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["processes"] == 2
    # each process held half of every weight; checkpoints and best/ hold the full tensors of every one
    embed = "model.embed_tokens.weight"
    vocab = r["full_shapes"][embed][0]
    assert r["full_shapes"][embed] == [vocab, 64] and r["local_shapes"][embed] == [(vocab + 1) // 2, 64]
    assert r["saved_names"] == r["best_names"] == r["names"]
    assert r["saved_shapes"] == r["full_shapes"]
    assert r["saved_vs_gathered"] == 0.0 and r["best_vs_gathered"] == 0.0
    # the same global batch gives the losses of one unsharded process
    full, plain = losses(tmp_path / "full"), losses(tmp_path / "plain")
    assert list(full) == [1, 2, 3, 4]
    assert list(full.values()) == pytest.approx(list(plain.values()), abs=1e-5)
    # a fresh sharded model restored from step 2: the same weights and Adam moments, then the same steps
    assert r["restored_step"] == 2 and r["restored_vs_checkpoint"] == 0.0
    assert r["moments_nonzero"] and r["moments_vs_checkpoint"] == 0.0
    assert r["moved_since_step2"] > 1e-3
    resumed = losses(tmp_path / "resumed")
    assert resumed == {3: full[3], 4: full[4]}
    assert r["resumed_vs_full"] == 0.0
    # model/ loads with plain transformers and gives the sharded model's logits
    assert r["logits_hf_vs_sharded"] < 1e-5
    # LoRA: checkpoints hold the full adapter weights alone; adapter/ loads with plain peft, same logits
    assert r["lora_saved_names"] == r["lora_names"] and len(r["lora_names"]) == 8  # A and B of q, v in 2 layers
    assert r["lora_shapes"]["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == [8, 64]
    assert r["lora_vs_gathered"] == 0.0 and r["lora_b_max"] > 1e-3  # B starts at zero: it trained
    assert r["logits_peft_vs_sharded"] < 1e-5
    # such a checkpoint is refused, with the reason, by a run without FSDP
    from transformers import AutoModelForCausalLM

    from instructune.errors import InstructuneError
    from instructune.training.checkpoint import load_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(InstructuneError, match="was written under FSDP .*resume it under FSDP"):
        load_checkpoint(tmp_path / "full" / "checkpoint-00000002", model, optimizer,
                        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))


@pytest.mark.slow
def test_fsdp_config_on_cpu_runs_ddp_and_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`accelerate launch` with configs/accelerate/fsdp.yaml on CPU: Accelerate runs DDP, the run says so once."""
    import yaml

    (tmp_path / "reviews.jsonl").write_text("".join(
        json.dumps({"text": f"a {w} film number {i}", "label": "pos" if w == "good" else "neg"}) + "\n"
        for i in range(24) for w in ["good" if i % 2 else "dull"]))
    (tmp_path / "templates.yaml").write_text(
        "templates:\n  - id: mood\n    task: classification\n    choices: {pos: positive, neg: negative}\n"
        "    prompt: \"Review: {{ text }}\\nPositive or negative?\"\n")
    cfg = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 2,
           "eval_every": 0, "save_every": 0, "eval_mode": "likelihood", "precision": "fp32",
           "method": {"name": "lora"}, "data": {"source": str(tmp_path / "reviews.jsonl"), "templates": ["mood"],
                                                "template_file": str(tmp_path / "templates.yaml"),
                                                "val_limit": 4, "test_limit": 4}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    fsdp_yaml = Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp.yaml"
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fsdp_yaml),
                          "--main_process_port", "0", "-m", "instructune", "train", str(tmp_path / "cfg.yaml")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    notes = [line for line in run.stdout.splitlines() if "Accelerate enables FSDP on GPUs only" in line]
    import accelerate

    assert len(notes) == 1 and "this run is DDP on CPU" in notes[0] and accelerate.__version__ in notes[0]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


@pytest.mark.parametrize("version, activation_checkpointing, message", [
    (1, False, "FSDP1 is not supported"), (2, True, "fsdp_activation_checkpointing is not supported")])
def test_fsdp_settings_checkpoints_cannot_read_are_refused(version: int, activation_checkpointing: bool,
                                                            message: str) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from instructune.errors import InstructuneError
    from instructune.training.setup import check_fsdp

    plugin = SimpleNamespace(fsdp_version=version, activation_checkpointing=activation_checkpointing)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin),
                                  is_main_process=True)
    with pytest.raises(InstructuneError, match=message):
        check_fsdp(accelerator, print)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), shard=sys.argv[3] == "fsdp")
