"""The general-behaviour probe: the cross-entropy, under the model scored, of the original model's own
answers to general instructions it was never tuned on (the validation or test half of the shipped list).
A rise means the model moved away from what it used to say."""

from __future__ import annotations

from dataclasses import dataclass

from instructune.data.task import SplitSpec
from instructune.forgetting.kinds.base import Scored
from instructune.forgetting.measures import HeldOut, general_probe, probe_capacity, probe_prompts
from instructune.types import JSONValue, Model, Tokenizer

KEY = "general-probe"


@dataclass
class Options:
    prompts: int = 16
    """General prompts of the shipped list's held-out half (0 = off)."""
    tokens: int = 32
    """Longest original answer generated."""

    def problems(self) -> list[str]:
        out = [] if 0 <= self.prompts <= probe_capacity() else [
            f"prompts must be 0 to {probe_capacity()} (the prompts in each half of the shipped list), got {self.prompts}"]
        return out + ([] if self.tokens >= 1 else [f"tokens must be at least 1, got {self.tokens}"])


def on(options: Options) -> bool:
    return options.prompts > 0


def inputs(options: Options, split: SplitSpec, seed: int, held_out: HeldOut) -> list[str]:
    return probe_prompts(held_out, options.prompts)


def score(inputs: list[str], model: Model, tok: Tokenizer, options: Options, dtype: str,
          state: JSONValue) -> Scored:
    answers = state if isinstance(state, list) else None  # None: this is the original, its answers are made
    answers, ce = general_probe(model, tok, inputs, answers, max_new_tokens=options.tokens, dtype=dtype)
    return Scored("cross_entropy", ce, answers)
