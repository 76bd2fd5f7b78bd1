"""The types that travel between the parts: a model, its tokenizer, a log line sink, JSON-shaped data.

Annotations only (every module here uses `from __future__ import annotations`), so importing this
module imports neither torch nor transformers:

    def score(model: Model, tok: Tokenizer, log: Log = print) -> Scores: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias, Union

if TYPE_CHECKING:  # heavy imports, for type checkers only
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Model: TypeAlias = Union["PreTrainedModel", "PeftModel"]
"""A causal language model: a transformers model, or a peft model wrapping one."""
Tokenizer: TypeAlias = "PreTrainedTokenizerBase"
"""A transformers tokenizer (with the chat template the model is prompted with)."""
Log: TypeAlias = Callable[[str], object]
"""Where progress lines go: `print`, `progress.say`, `list.append`, or a no-op."""
JSONValue: TypeAlias = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
"""A value JSON (or YAML) can hold."""
JSON: TypeAlias = dict[str, JSONValue]
"""A JSON object: a metrics.json, a result file, a config as plain data."""
Scores: TypeAlias = dict[str, float]
"""Metric name -> value."""
Record: TypeAlias = dict[str, JSONValue]
"""One example of a built dataset (prompt, completion or messages, template, id, ...)."""
