"""Selective methods: train a chosen subset of the original weights, freeze the rest.

- `bitfit` (Ben Zaken et al. 2022): biases, plus normalisation weights (llama-style models have no biases).
- `last_n`: the last N transformer blocks (and the final norm).
- `regex`: parameters whose names match any of the given regular expressions.
"""

from __future__ import annotations

import re
from typing import Any

from instructune.errors import InstructuneError


def _train_only(model: Any, keep: Any, what: str) -> Any:
    names = [n for n, _ in model.named_parameters()]
    chosen = {n for n in names if keep(n)}
    if not chosen:
        raise InstructuneError(f"method {what} selects no parameter of this model; parameter names look like: "
                               f"{', '.join(names[:6])} ... — adjust method.patterns / method.last_n.")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return model


def bitfit(model: Any, **_: Any) -> Any:
    return _train_only(model, lambda n: n.endswith(".bias") or "norm" in n.split(".")[-2], "bitfit")


def last_n(model: Any, last_n: int = 2, **_: Any) -> Any:
    layers = model.config.num_hidden_layers
    if not 1 <= last_n <= layers:
        raise InstructuneError(f"method.last_n must be between 1 and {layers} (the model's blocks), got {last_n}.")
    first = layers - last_n

    def keep(n: str) -> bool:
        m = re.search(r"\.layers\.(\d+)\.", n)
        return (m is not None and int(m.group(1)) >= first) or n.startswith("model.norm.")
    return _train_only(model, keep, f"last_n={last_n}")


def regex(model: Any, patterns: list[str] | None = None, **_: Any) -> Any:
    if not patterns:
        raise InstructuneError("method regex needs method.patterns, e.g. patterns: ['mlp\\.down_proj'].")
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise InstructuneError(f"method.patterns: {e.pattern!r} is not a valid regular expression ({e}).") from None
    return _train_only(model, lambda n: any(c.search(n) for c in compiled), f"regex {patterns}")
