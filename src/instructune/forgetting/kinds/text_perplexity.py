"""The plain-text perplexity probe: the cross-entropy of held-out plain texts (a pack's or a file's texts
of the held-out split, never trained on), no chat template. A rise means general language modelling
got worse."""

from __future__ import annotations

from dataclasses import dataclass

from instructune.data.task import SplitSpec
from instructune.forgetting.kinds.base import Scored
from instructune.forgetting.measures import HeldOut, held_out_texts, text_probe
from instructune.types import JSONValue, Model, Tokenizer

KEY = "text-perplexity"


@dataclass
class Options:
    source: str | None = None
    """A pack (or file) whose held-out texts are scored (null = off)."""
    limit: int = 16
    """Texts scored."""
    words: int = 120
    """Each text is cut to this many words."""

    def problems(self) -> list[str]:
        return [f"{name} must be at least 1, got {getattr(self, name)}"
                for name in ("limit", "words") if getattr(self, name) < 1]


def on(options: Options) -> bool:
    return bool(options.source)


def inputs(options: Options, split: SplitSpec, seed: int, held_out: HeldOut) -> list[str]:
    return held_out_texts(options.source, split, options.limit, options.words, seed, held_out=held_out)


def score(inputs: list[str], model: Model, tok: Tokenizer, options: Options, dtype: str,
          state: JSONValue) -> Scored:
    return Scored("cross_entropy", text_probe(model, tok, inputs, dtype=dtype))
