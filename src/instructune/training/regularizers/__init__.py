"""Forgetting regularizers: penalties that keep a fine-tuned model near what it knew, one file each.

| name | paper | penalty | needs keep data |
|---|---|---|---|
| `ewc` | Kirkpatrick et al. 2017 | lam/2 sum F_i (theta_i - theta*_i)^2, F the diagonal empirical Fisher | yes (Fisher) |
| `si` | Zenke et al. 2017 | lam sum Omega_i (theta_i - theta*_i)^2, Omega from a path integral | yes (warm-up) |
| `l2sp` | Li et al. 2018 | lam/2 sum (theta_i - theta*_i)^2 | no |
| `distill` | Li and Hoiem 2016 | lam T^2 KL(teacher, student) on replayed keep prompts | yes (every step) |

`build_regularizer(name, model, keep_batches, lam=..., **options)` builds one; the training loop calls
`penalty`, `before_step`, `after_step` and `state_dict` (see base.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from instructune.errors import InstructuneError
from instructune.training.regularizers.base import KeepBatches, Regularizer
from instructune.training.regularizers.distill import Distill
from instructune.training.regularizers.ewc import EWC
from instructune.training.regularizers.l2sp import L2SP
from instructune.training.regularizers.si import SynapticIntelligence

REGULARIZERS: dict[str, Callable[..., Regularizer]] = {
    "ewc": EWC.build,
    "si": SynapticIntelligence.build,
    "l2sp": L2SP.build,
    "distill": Distill.build,
}


def options_of(name: str) -> dict[str, Any]:
    """The options a regularizer accepts, with their defaults."""
    params = list(inspect.signature(REGULARIZERS[name]).parameters.values())[2:]  # after model, keep_batches
    return {p.name: p.default for p in params}


def build_regularizer(name: str, model: nn.Module, keep_batches: KeepBatches, **options: Any) -> Regularizer:
    """Build regularizer `name` for the model's trainable parameters; unknown names or options are errors."""
    if name not in REGULARIZERS:
        raise InstructuneError(f"regularizers: unknown regularizer '{name}'; known: {', '.join(REGULARIZERS)}. "
                               "Fix regularizers[].name in the config.")
    accepted = options_of(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InstructuneError(f"regularizer '{name}': unknown option(s) {', '.join(unknown)}; it accepts "
                               f"{', '.join(f'{k} (default {v!r})' for k, v in accepted.items())}. Fix "
                               "regularizers[].options in the config.")
    return REGULARIZERS[name](model, keep_batches, **options)


__all__ = ["REGULARIZERS", "Regularizer", "build_regularizer", "options_of", "EWC", "SynapticIntelligence",
           "L2SP", "Distill"]
