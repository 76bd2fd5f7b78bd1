"""Fine-tuning methods, one module each, in one registry.

A method module has the same small shape: `NAME`, its own `Options` dataclass (a subclass of
`MethodOptions`, or of `PromptLearningOptions` when it prepends virtual tokens: a docstring per field,
checks in `problems()`), `apply(model, options, tokenizer_path=None)`, which returns the model
to train with exactly the right parameters requiring grad, and two flags: `PEFT` (only an adapter
is saved) and `PROMPT_LEARNING` (virtual tokens are prepended). PEFT families come from peft,
never re-written.

| family | names |
|---|---|
| full | `full` |
| selective | `bitfit`, `last_n`, `regex` |
| reparameterization | `lora` (DoRA with `dora: true`) |
| additive | `prompt_tuning`, `ia3`, `prefix_tuning` |

Adding a method is one new module of that shape plus its entry in `_MODULES` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from instructune.config import from_dict
from instructune.errors import InstructuneError
from instructune.methods import bitfit, full, ia3, last_n, lora, prefix_tuning, prompt_tuning, regex
from instructune.methods.options import MethodOptions, PromptLearningOptions

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedModel

    from instructune.types import JSON

_MODULES: tuple[ModuleType, ...] = (full, bitfit, last_n, regex, lora, prompt_tuning, ia3, prefix_tuning)


@dataclass(frozen=True)
class Method:
    """A method module's facts, read from the module."""

    name: str
    options: type[MethodOptions]
    """Its options dataclass."""
    apply: Callable[..., nn.Module]
    """`apply(model, options, tokenizer_path=None)`: the model to train, with the right parameters trainable."""
    peft: bool
    prompt_learning: bool

    @classmethod
    def of(cls, module: ModuleType) -> Method:
        return cls(module.NAME, module.Options, module.apply, module.PEFT, module.PROMPT_LEARNING)

    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]

    def __call__(self, model: PreTrainedModel, tokenizer_path: str | None = None, **options: object) -> nn.Module:
        """Apply with options given as keywords: `METHODS["lora"](model, r=16)`."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise InstructuneError(f"method {self.name} has no option {', '.join(unknown)}; its options: "
                                   f"{', '.join(self.option_names()) or 'none'}.")
        return self.apply(model, self.options(**options), tokenizer_path=tokenizer_path)


METHODS: dict[str, Method] = {m.NAME: Method.of(m) for m in _MODULES}


@dataclass
class MethodConfig:
    """`method:` in a config: a method's name and that method's own options, written flat in YAML
    (`method: {name: lora, r: 16}`); an option of another method is refused."""

    name: str = "lora"
    """full | bitfit | last_n | regex | lora | prompt_tuning | ia3 | prefix_tuning."""
    options: MethodOptions = field(default_factory=MethodOptions)
    """The chosen method's options (its module's `Options`), written flat beside `name`; read them as
    `method.options.r`. Left out, the method's defaults."""

    def __post_init__(self) -> None:
        if self.name not in METHODS:  # an unknown name is reported by `from_config`
            return
        chosen = METHODS[self.name].options
        if type(self.options) is MethodOptions:  # left out
            self.options = chosen()
        elif not isinstance(self.options, chosen):
            raise InstructuneError(f"method {self.name} takes {chosen.__module__}.Options, got "
                                   f"{type(self.options).__module__}.{type(self.options).__name__}.")

    @property
    def peft(self) -> bool:
        """Whether only an adapter is trained and saved."""
        return METHODS[self.name].peft

    @property
    def prompt_learning(self) -> bool:
        """Whether virtual tokens are prepended to the input."""
        return METHODS[self.name].prompt_learning

    @property
    def virtual_tokens(self) -> int:
        """How many virtual tokens are prepended to every input (0 unless the method is prompt learning)."""
        return self.options.num_virtual_tokens if isinstance(self.options, PromptLearningOptions) else 0

    def as_config_dict(self) -> JSON:
        """The flat YAML form: name plus the options."""
        options = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        return {"name": self.name, **options}

    @classmethod
    def from_config(cls, data: dict[str, object], prefix: str, problems: list[str]) -> MethodConfig | None:
        """Build from the flat YAML form, reporting an unknown method or an option it does not have."""
        name = str(data.get("name", "lora"))
        if name not in METHODS:  # reported; the enclosing config's own checks still run
            problems.append(f"{prefix}name: unknown method '{name}'; known: {', '.join(METHODS)}")
            return cls(name)
        method, options = METHODS[name], {}  # the options given, by name
        for key, value in data.items():
            if key == "name":
                continue
            if key in method.option_names():
                options[key] = value
                continue
            owners = [m.name for m in METHODS.values() if key in m.option_names()]
            problems.append(f"{prefix}{key}: not an option of method {name} (options: "
                            f"{', '.join(method.option_names()) or 'none'})"
                            + (f"; it belongs to {', '.join(owners)}: remove it, or set {prefix}name to one of them"
                               if owners else "; remove it"))
        built = from_dict(method.options, options, prefix, problems)  # None when an option is reported
        return cls(name, built if built is not None else method.options())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
