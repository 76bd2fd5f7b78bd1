"""Example prompts with each setting's answer side by side, from eval.json's per-example predictions."""

from __future__ import annotations

import re

from instructune.report.blocks import Answer, Example, Examples, Section
from instructune.report.data import EvalRun, Runs, setting_kind
from instructune.types import JSON

MAX_COLUMNS = 4
MAX_EXAMPLES = 4
# The last user turn of a chat-formatted prompt: ChatML, Llama 3, Gemma / Mistral-like markup.
USER_TURN = [re.compile(p, re.S) for p in (
    r"<\|im_start\|>user\n(.*?)<\|im_end\|>",
    r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
    r"<start_of_turn>user\n(.*?)<end_of_turn>",
    r"\[INST\](.*?)\[/INST\]",
)]


def user_turn(text: str) -> str:
    """The instruction as written, without chat markup or few-shot exemplars (the text itself otherwise)."""
    for pattern in USER_TURN:
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    return text.strip()


def pick_columns(results: list[JSON]) -> list[JSON]:
    """Base zero-shot first, then the base setting with the most shots, then the tuned settings."""
    with_preds = [r for r in results if r.get("predictions")]
    base = [r for r in with_preds if setting_kind(r) == "base"]
    few = sorted((r for r in with_preds if setting_kind(r) == "few-shot"), key=lambda r: -r["shots"])
    tuned = [r for r in with_preds if setting_kind(r) == "tuned"]
    chosen = base[:1] + few[:1] + tuned
    return chosen[:MAX_COLUMNS] if len(chosen) >= 2 else with_preds[:MAX_COLUMNS]


def pick_ids(columns: list[JSON]) -> tuple[list[str], str]:
    """Up to MAX_EXAMPLES ids every column answered, and a note on how they were picked.

    With correctness flags: first the examples tuning fixed (base wrong, tuned right), then one it
    broke, then one both got right, then the rest, in file order, so the picture is not one-sided.
    """
    by_col = [{str(p["id"]): p for p in c["predictions"]} for c in columns]
    common = [i for i in by_col[0] if all(i in b for b in by_col[1:])]
    if not common:
        return [], ""
    base, tuned = by_col[0], by_col[-1]
    if not all("correct" in base[i] and "correct" in tuned[i] for i in common):
        return common[:MAX_EXAMPLES], f"The first {min(MAX_EXAMPLES, len(common))} of {len(common)} examples."
    fixed = [i for i in common if tuned[i]["correct"] and not base[i]["correct"]]
    broke = [i for i in common if base[i]["correct"] and not tuned[i]["correct"]]
    both = [i for i in common if base[i]["correct"] and tuned[i]["correct"]]
    picked = list(dict.fromkeys(fixed[:2] + broke[:1] + both[:1] + common))[:MAX_EXAMPLES]
    order = {i: n for n, i in enumerate(common)}
    note = (f"Of the {len(common)} examples every setting answered, {_column_label(columns[-1])} got {len(fixed)} right "
            f"that {_column_label(columns[0])} got wrong, and {len(broke)} wrong that it got right. Shown: up to two of "
            "the former, one of the latter, one both got right, in file order.")
    return sorted(picked, key=order.get), note


def eval_examples(ev: EvalRun) -> Examples | None:
    columns = pick_columns(ev.data["results"])
    if not columns:
        return None
    ids, note = pick_ids(columns)
    if not ids:
        return None
    by_col = [{str(p["id"]): p for p in c["predictions"]} for c in columns]
    examples = []
    for i in ids:
        first = by_col[0][i]
        answers = [Answer(_column_label(c), str(b[i].get("prediction", "")), b[i].get("correct"), setting_kind(c))
                   for c, b in zip(columns, by_col)]
        examples.append(Example(i, user_turn(str(first.get("prompt", ""))), str(first.get("prompt", "")),
                                str(first.get("reference", "")), answers))
    title = " / ".join(str(ev.data[k]) for k in ("data", "template", "split") if k in ev.data) or ev.label
    return Examples(title, examples, note)


def _column_label(r: JSON) -> str:
    return f"{r['setting']} \u00b7 {r['shots']}-shot" if r.get("shots") else str(r["setting"])


def examples_section(runs: Runs) -> Section | None:
    blocks = [b for b in (eval_examples(ev) for ev in runs.evals) if b]
    if not blocks:
        return None
    return Section("examples", "Examples", "The same prompts answered by the base model and the fine-tuned "
                   "ones (\u2713 right, \u2717 wrong, as scored in eval.json).", blocks)
