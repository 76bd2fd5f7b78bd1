"""Forgetting cures: penalties that keep a fine-tuned model near what it knew, one module each.

| name | paper | penalty | needs keep data |
|---|---|---|---|
| `ewc` | Kirkpatrick et al. 2017 | lam/2 sum F_i (theta_i - theta*_i)^2, F the diagonal empirical Fisher | yes (Fisher) |
| `si` | Zenke et al. 2017 | lam sum Omega_i (theta_i - theta*_i)^2, Omega from a path integral | yes (warm-up) |
| `l2sp` | Li et al. 2018 | lam/2 sum (theta_i - theta*_i)^2 | no |
| `distill` | Li and Hoiem 2016 | lam T^2 KL(teacher, student) on replayed keep prompts | yes (every step) |

A cure module has the same small shape as a method module: `NAME`, its own `Options` dataclass (a
docstring per field, range checks in `problems()`), and `build(model, keep_batches, lam, options)`,
which returns a `Regularizer`; the training loop calls its `penalty`, `before_step`, `after_step` and
`state_dict` (see base.py). A config's `regularizers: [{name: ewc, lam: 1.0, options: {samples: 64}}]`
is checked against the cure's `Options` when the config loads, before any model does.

Adding a cure is one new module of that shape plus its entry in `_MODULES` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from instructune.config import field_docs, from_dict, quoted, suggest
from instructune.errors import InstructuneError
from instructune.forgetting.cures import distill, ewc, l2sp, si
from instructune.forgetting.cures.base import KeepBatches, Regularizer, accepted, keyword_options
from instructune.forgetting.cures.distill import Distill
from instructune.forgetting.cures.ewc import EWC
from instructune.forgetting.cures.l2sp import L2SP
from instructune.forgetting.cures.si import SynapticIntelligence

_MODULES: tuple[ModuleType, ...] = (ewc, si, l2sp, distill)


@dataclass(frozen=True)
class Cure:
    """A cure module's facts, read from the module."""

    name: str
    options: type
    """Its options dataclass."""
    build: Callable[..., Regularizer]
    """`build(model, keep_batches, lam, options)`."""

    @classmethod
    def of(cls, module: ModuleType) -> Cure:
        return cls(module.NAME, module.Options, module.build)

    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]

    def read_options(self, data: Any, prefix: str, problems: list[str]) -> Any:
        """Its `Options` from a config's `options:` mapping; an option it does not have, a wrong type or an
        out-of-range value is a problem under `prefix` (`regularizers.0.options.`), naming the options it has."""
        if not isinstance(data, dict):
            problems.append(f"{prefix.rstrip('.')}: expected a mapping of option: value, got {quoted(data)}; "
                            f"{self.name} accepts {accepted(self.options)}")
            return None
        for key in data:
            if key not in self.option_names():
                close = suggest(str(key), self.option_names(), field_docs(self.options))
                problems.append(f"{prefix}{key}: not an option of regularizer {self.name}"
                                + (f"; did you mean '{close}'?" if close else "")
                                + f" It accepts {accepted(self.options)}.")
        known = {k: v for k, v in data.items() if k in self.option_names()}
        return from_dict(self.options, known, prefix, problems)


REGULARIZERS: dict[str, Cure] = {m.NAME: Cure.of(m) for m in _MODULES}


def build_regularizer(name: str, model: nn.Module, keep_batches: KeepBatches, lam: float = 1.0,
                      options: Any = None, **keywords: Any) -> Regularizer:
    """Build cure `name` for the model's trainable parameters, with its typed `options` (a config's
    `RegularizerConfig.options`) or its options as keywords (`samples=8`); unknown names or options are errors."""
    if name not in REGULARIZERS:
        raise InstructuneError(f"regularizers: unknown regularizer '{name}'; known: {', '.join(REGULARIZERS)}. "
                               "Fix regularizers[].name in the config.")
    cure = REGULARIZERS[name]
    if options is None:
        options = keyword_options(cure.options, name, keywords)
    elif keywords or not isinstance(options, cure.options):
        raise InstructuneError(f"regularizer '{name}': give its own Options (forgetting.cures.{name}.Options) or "
                               "its options as keywords, not both.")
    return cure.build(model, keep_batches, lam, options)


__all__ = ["REGULARIZERS", "Cure", "Regularizer", "build_regularizer", "EWC", "SynapticIntelligence",
           "L2SP", "Distill"]
