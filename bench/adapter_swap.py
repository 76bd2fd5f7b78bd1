"""Adapter hot-swap on the real model: how long does switching adapters take, and is the base ever reloaded?

    .venv/bin/python bench/adapter_swap.py          # pulls smollm2-135m-instruct first if needed

Two LoRA adapters (r=8 on q_proj and v_proj, random B so each changes the logits) are loaded
next to each other on one SmolLM2-135M base (`AdapterSet`). The script swaps between them
100 times, timing each swap (`set_adapter` under the model lock), and checks that the base
model object and its weight tensors stay the same and that no `from_pretrained` runs. After
the swaps, each adapter's logits (and the base's) must still equal those taken before.
Writes bench/results/adapter_swap.json and .md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from instructune.adapters.merge import random_lora
from instructune.data.prompt import prompt_text
from instructune.hardware import describe_machine, machine_summary, shapes_of
from instructune.models import DEFAULT_MODEL, pull_model
from instructune.results import write_results
from instructune.serving.hotswap import AdapterSet

SWAPS = 100
TARGET_MS = 50.0
OUT = Path(__file__).parent / "results"


def probe_logits(aset: AdapterSet, ids: torch.Tensor, adapter: str | None) -> torch.Tensor:
    with aset.use(adapter) as model, torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def main() -> int:
    pull_model(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: random_lora(DEFAULT_MODEL, Path(tmp) / name, seed=seed, r=8, scale=0.02)
                 for name, seed in (("a", 1), ("b", 2))}
        start = time.perf_counter()
        aset = AdapterSet(DEFAULT_MODEL, paths)
        load_s = time.perf_counter() - start
    base, embed = aset.base_model, aset.base_model.get_input_embeddings().weight
    q_proj = base.model.layers[0].self_attn.q_proj.base_layer.weight
    ids = aset.tokenizer(prompt_text(aset.tokenizer, "Is this review positive? Great film."),
                         return_tensors="pt")["input_ids"]
    before = {name: probe_logits(aset, ids, name) for name in (None, "a", "b")}
    start = time.perf_counter()
    probe_logits(aset, ids, "a")
    forward_ms = (time.perf_counter() - start) * 1000

    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained
    transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: loads.append(a) or original(*a, **k)
    times = []
    try:
        for i in range(SWAPS):
            start = time.perf_counter()
            with aset.use("ab"[i % 2]):
                pass
            times.append((time.perf_counter() - start) * 1000)
    finally:
        transformers.AutoModelForCausalLM.from_pretrained = original

    after = {name: probe_logits(aset, ids, name) for name in (None, "a", "b")}
    checks = {
        "same_base_object": aset.model.base_model.model is base,
        "same_weight_tensors": (base.get_input_embeddings().weight is embed
                                and base.model.layers[0].self_attn.q_proj.base_layer.weight is q_proj),
        "no_from_pretrained_during_swaps": not loads,
        "adapters_change_logits": all(float((before[n] - before[None]).abs().max()) > 1e-3 for n in ("a", "b")),
        "logits_unchanged_after_swaps": all(torch.equal(before[n], after[n]) for n in before),
    }
    result = {
        "model": DEFAULT_MODEL, "adapters": "2 x LoRA r=8 on q_proj, v_proj", "swaps": SWAPS,
        "swap_ms_median": round(statistics.median(times), 4), "swap_ms_p90": round(sorted(times)[89], 4),
        "swap_ms_max": round(max(times), 4), "target_ms": TARGET_MS,
        "forward_ms_one_prompt": round(forward_ms, 2), "prompt_tokens": ids.shape[1],
        "load_base_and_adapters_s": round(load_s, 2), "checks": checks,
        "machine": {**machine_summary(shapes_of(DEFAULT_MODEL)), "python": platform.python_version(),
                    "transformers": transformers.__version__, "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    write(result)
    ok = all(checks.values()) and result["swap_ms_max"] < TARGET_MS
    print(json.dumps(result, indent=2))
    print("OK" if ok else "FAILED: see checks / target")
    return 0 if ok else 1


def write(r: dict) -> None:
    checks = "\n".join(f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["checks"].items())
    write_results(OUT, "adapter_swap", r, f"""# Adapter hot-swap ({r['model']}, {r['adapters']})

`.venv/bin/python bench/adapter_swap.py`: {r['swaps']} swaps between two adapters on one base model.

| per swap | ms |
|---|---|
| median | {r['swap_ms_median']:.3f} |
| p90 | {r['swap_ms_p90']:.3f} |
| max | {r['swap_ms_max']:.3f} |
| target (max) | < {r['target_ms']:.0f} |

For scale: one forward pass over a {r['prompt_tokens']}-token prompt takes {r['forward_ms_one_prompt']:.1f} ms;
loading the base plus both adapters took {r['load_base_and_adapters_s']:.1f} s (a reload per request would cost that).

| check | |
|---|---|
{checks}

{describe_machine(r['machine'])}; transformers {r['machine']['transformers']}, load average {r['machine']['load_average_1min']} (other work on the machine slows every number).

""")


if __name__ == "__main__":
    sys.exit(main())
