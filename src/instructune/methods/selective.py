"""What the selective methods share: train a chosen subset of the original weights, freeze the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from instructune.errors import InstructuneError

if TYPE_CHECKING:  # annotations only
    from torch import nn


def train_only(model: nn.Module, keep: Callable[[str], bool], what: str) -> nn.Module:
    """Parameters whose names `keep` accepts train; the rest freeze. Refuses a choice of nothing."""
    names = [n for n, _ in model.named_parameters()]
    chosen = {n for n in names if keep(n)}
    if not chosen:
        raise InstructuneError(f"method {what} selects no parameter of this model; parameter names look like: "
                               f"{', '.join(names[:6])} ... — adjust method.patterns / method.last_n.")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return model
