"""alpaca-eval: AlpacaEval instructions with the preferred of two model answers, as alpaca records."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

from instructune.data.packs.base import DataPack, Rows


def read(zf: zipfile.ZipFile, member: str, dropped: Counter) -> Rows:
    """Preference annotations (instruction, input, output_1, output_2, preference 1|2): each distinct
    instruction once, with the answer its annotator preferred."""
    rows: Rows = []
    seen: set[tuple[str, str]] = set()
    for r in json.loads(zf.read(member)):
        key = (r["instruction"].strip(), (r.get("input") or "").strip())
        if key in seen:
            continue
        if r.get("preference") not in (1, 2):
            continue  # a tie or no judgement: a later annotation of the same instruction may have one
        output = (r.get(f"output_{r['preference']}") or "").strip()
        if not key[0] or not output:
            dropped["empty instruction or answer"] += 1
        else:
            rows.append(("\0".join(key), {"instruction": key[0], "input": key[1], "output": output}))
        seen.add(key)
    return rows


PACK = DataPack(
    name="alpaca-eval",
    description="AlpacaEval instructions with the preferred of two model answers (alpaca records)",
    task="instruction",
    package="alpaca-eval",
    version="0.1.7",
    member="alpaca_eval/evaluators_configs/claude/annotations_seed0_configs.json",
    licence="CC BY-NC 4.0 (AlpacaEval data, non-commercial research); shipped in alpaca-eval 0.1.7",
    text_field="instruction",
    reader=read,
    format="alpaca",
)
