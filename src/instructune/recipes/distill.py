"""Sequence-level distillation (Kim and Rush 2016): a teacher answers the prompts of a dataset, and its answers
become the training targets of a student, written as alpaca or messages JSONL.

    instructune data distill --teacher gemma3-270m --pack rotten-tomatoes --template sentiment \
        --split train --limit 400 --out teacher-answers.jsonl
    instructune train configs/lora-rotten-tomatoes.yaml data.source=teacher-answers.jsonl

What passes from teacher to student is text, not logits, so the two need not share a tokenizer or
a vocabulary (the `distill` regularizer, which matches logits, needs both). The teacher reads each
prompt as evaluation does (its own chat template; a conversation up to its last user turn) and
answers greedily; the reference answer is replaced by the teacher's, everything else is kept. As a
forgetting cure, distil the keep tasks' prompts with the original model and replay the file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from instructune.data.formats import EXPORTS, export
from instructune.data.packs import PACKS
from instructune.data.task import SplitSpec, TaskSpec, load_split, subset
from instructune.errors import InstructuneError
from instructune.evaluation.evaluate import build_prompts
from instructune.evaluation.generate import generate
from instructune.files import write_atomic
from instructune.hardware import eval_dtype
from instructune.models import load_model
from instructune.paths import refuse_overwrite
from instructune.types import JSON, Log


def distill(teacher: str, task: TaskSpec, out: Path, split: str = "train", fmt: str = "alpaca",
            limit: int | None = None, seed: int = 0, max_new_tokens: int = 128, batch_size: int = 16,
            dtype: str = "auto", log: Log = print) -> JSON:
    """Write the teacher's answers to `split` of `task` as `fmt` JSONL at `out`; returns what was done."""
    if fmt not in EXPORTS:
        raise InstructuneError(f"--format {fmt!r}: distilled data is written as {' or '.join(EXPORTS)}.")
    if max_new_tokens < 1:
        raise InstructuneError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if limit is not None and limit < 1:
        raise InstructuneError(f"--limit must be at least 1, got {limit}; leave it out for every prompt.")
    refuse_overwrite("--out", out, [out], {"SOURCE": None if task.source in PACKS else task.source,
                                           "--templates-file": task.template_file, "--teacher": teacher},
                     "give --out a new file, outside the folders it reads")
    records = subset(load_split(task, SplitSpec(seed=seed), split), limit, seed)
    if not records:
        raise InstructuneError(f"the {split} split of {task.source} is empty; choose another --split or more data.")

    # --- the teacher answers every prompt, as evaluation would ask it
    precision = eval_dtype(dtype, teacher, log=log)  # auto: measured on this machine
    model, tok = load_model(teacher)
    start = time.time()
    prompts = build_prompts(tok, records, 0, None, seed, raw=False)
    answers = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=precision)
    seconds = time.time() - start

    # --- its answers replace the references; an empty answer teaches nothing and is left out
    rows, empty = [], 0
    for record, answer in zip(records, answers, strict=True):
        answer = answer.strip()
        if not answer:
            empty += 1
            continue
        if "messages" in record:
            record = {**record, "messages": [*record["messages"][:-1], {"role": "assistant", "content": answer}]}
        rows.append(export({**record, "completion": answer}, fmt))
    if not rows:
        raise InstructuneError(f"the teacher {teacher} gave an empty answer to every prompt; check that it can "
                               "generate (`instructune generate`) or raise --max-new-tokens.")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"teacher": teacher, "source": task.source, "split": split, "format": fmt, "prompts": len(records),
               "written": len(rows), "empty": empty, "seconds": seconds,
               "prompts_per_s": len(records) / max(seconds, 1e-9), "dtype": precision}
    log(f"{teacher} answered {len(records)} prompts of {task.source} ({split}) in {seconds:.0f} s "
        f"({summary['prompts_per_s']:.2f}/s, {precision}); wrote {len(rows)} as {fmt} to {out}"
        + (f"; {empty} empty answers left out" if empty else ""))
    if empty * 2 > len(records):
        log(f"warning: most answers were empty ({empty} of {len(records)}). A teacher that ends its answer at once "
            "usually reads prompts in another chat format than it trained with: a base model tuned with "
            "data.chat_format needs that template saved in its folder (an adapter, or a model merged from one).")
    return summary
