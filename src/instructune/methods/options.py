"""What every method's options share: each module's `Options` dataclass subclasses `MethodOptions`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MethodOptions:
    """A method's options: a dataclass with a docstring per field, written flat beside `name` in YAML."""

    def problems(self) -> list[str]:
        """Every problem with these values, reported together (none unless the method checks some)."""
        return []


@dataclass
class PromptLearningOptions(MethodOptions):
    """Options of a prompt-learning method, which prepends trainable virtual tokens to every input (as peft's
    `PromptLearningConfig` does for its configs)."""

    num_virtual_tokens: int = 20
    """Number of virtual tokens."""

    def problems(self) -> list[str]:
        n = self.num_virtual_tokens
        return [f"num_virtual_tokens must be at least 1, got {n}"] if n < 1 else []
