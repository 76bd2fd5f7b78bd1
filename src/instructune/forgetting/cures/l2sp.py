"""L2-SP (Li, Grandvalet and Davoine 2018, "Explicit inductive bias for transfer learning with convolutional networks").

Weight decay toward the starting point instead of toward zero:

    penalty = lam / 2 * sum_i (theta_i - theta*_i)^2

over the trainable parameters, theta* their values when the regularizer is built. It needs no keep data.
With a peft adapter only the adapter weights train, so L2-SP pulls them toward their initialisation
(for LoRA: A toward its random init, B toward zero, i.e. the update B A toward zero); the frozen base
weights cannot move anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from instructune.forgetting.cures.base import (
    KeepBatches,
    Regularizer,
    check,
    keyword_options,
    setting_problems,
    snapshot,
    trainable_parameters,
    weighted_distance,
)

NAME = "l2sp"


@dataclass
class Options:
    """L2-SP has no options: lam is its only setting."""

    def problems(self) -> list[str]:
        return []


class L2SP(Regularizer):
    name = NAME
    state_groups = ("anchors",)

    def __init__(self, anchors: dict[str, torch.Tensor], lam: float):
        self.anchors, self.lam = anchors, lam

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.lam / 2 * weighted_distance(model, self.anchors, None, self.name)

    @classmethod
    def build(cls, model: nn.Module, keep_batches: KeepBatches | None = None, lam: float = 1.0,
              **options: object) -> L2SP:
        """`build` with the options as keywords (it has none)."""
        return build(model, keep_batches, lam, keyword_options(Options, NAME, options))


def build(model: nn.Module, keep_batches: KeepBatches | None, lam: float, options: Options) -> L2SP:
    """Anchor the trainable weights as they are now (keep_batches is not used)."""
    check(setting_problems(lam, options), NAME)
    return L2SP(snapshot(trainable_parameters(model, NAME)), lam)
