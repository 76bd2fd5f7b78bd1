"""Kinds of retention measure beside the retention tasks, one module each, in one registry.

A kind module has the same small shape: `KEY` (the measure's name in forgetting.json and in the
monitor's `drop/<KEY>`), its `Options` dataclass (a docstring per field, checks in `problems()`),
`on(options)` (whether these options turn it on), `inputs(options, split, seed, held_out)`, its
fixed inputs from the held-out side of the split (never trained on), and `score(inputs, model, tok, options, dtype, state)`, a
`Scored` (metric, one score per input, and the state a later scoring needs: the general probe keeps
the original model's answers, generated when `state` is None).

| key | what it scores |
|---|---|
| `general-probe` | the cross-entropy of the original model's own answers to held-out general prompts |
| `text-perplexity` | the cross-entropy of held-out plain texts |

Adding a kind is one module of that shape plus its entry in `_MODULES` below; a config then names it
under `measures:` (`measures: {my-measure: {limit: 8}}`) in training's `retention:`, the forgetting
study or a sweep's `forgetting:`.
"""

from __future__ import annotations

from types import ModuleType

from instructune.config import from_dict, quoted
from instructune.forgetting.kinds import general_probe, text_perplexity
from instructune.forgetting.kinds.base import Scored

_MODULES: tuple[ModuleType, ...] = (general_probe, text_perplexity)

KINDS: dict[str, ModuleType] = {m.KEY: m for m in _MODULES}


def read_measures(data: dict[str, object], prefix: str, problems: list[str]) -> dict[str, object]:
    """`measures:` of a config section as {key: that kind's Options}; an unknown kind or a bad option is a
    problem naming it (`retention.measures.my-measure.limit: ...`)."""
    out: dict[str, object] = {}
    for key, options in data.items():
        if key not in KINDS:
            problems.append(f"{prefix}measures.{key}: unknown kind of retention measure; known: {', '.join(KINDS)}")
            continue
        if options is None:
            options = {}
        if not isinstance(options, dict):
            problems.append(f"{prefix}measures.{key}: expected a mapping of its options, got {quoted(options)}")
            continue
        built = from_dict(KINDS[key].Options, options, f"{prefix}measures.{key}.", problems)
        if built is not None:
            out[key] = built
    return out


__all__ = ["KINDS", "Scored", "read_measures"]
