"""What a report is made of, independent of its output format: sections of tables, charts and examples.

The HTML and Markdown renderers walk the same `Section` list, so both show the same numbers,
formatted once here (3 decimals for scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    tone: str = ""
    """"good" / "bad" (a gain, a significant drop), or a pill kind: "base", "few-shot", "tuned"."""
    sub: str = ""
    """A second, smaller line (an interval under its estimate)."""


@dataclass
class Table:
    columns: list[str]
    numeric: list[bool]
    """Right-align this column."""
    rows: list[list[Cell]]
    title: str = ""
    note: str = ""


@dataclass
class Chart:
    name: str
    """File stem of the PNG next to report.md."""
    png: bytes
    caption: str
    """What to read from the chart."""
    alt: str


@dataclass
class Answer:
    setting: str
    text: str
    correct: bool | None
    kind: str


@dataclass
class Example:
    id: str
    prompt: str
    """The instruction as the user wrote it (the last user turn of the formatted prompt)."""
    full_prompt: str
    """The text the model saw, chat markup and exemplars included."""
    reference: str
    answers: list[Answer]


@dataclass
class Examples:
    title: str
    examples: list[Example]
    note: str = ""


@dataclass
class KeyValues:
    pairs: list[tuple[str, str]]
    title: str = ""


@dataclass
class Details:
    """Collapsed preformatted text (a config, a file list)."""

    summary: str
    text: str


@dataclass
class Card:
    label: str
    value: str
    sub: str = ""
    tone: str = ""


@dataclass
class Cards:
    cards: list[Card]


@dataclass
class Tokens:
    """Examples token by token, trained tokens highlighted (`data.inspect`)."""

    title: str
    html: str
    """An HTML fragment built with every piece of text escaped (`data.inspect.to_html`)."""
    text: str
    """The same as plain text, trained tokens inside [[ ]]."""


Block = Table | Chart | Examples | KeyValues | Details | Cards | Tokens


@dataclass
class Section:
    id: str
    title: str
    lead: str
    blocks: list[Block] = field(default_factory=list)
    nav: str = ""
    """Short name in the page's table of contents (default: the title)."""
    collapsed: bool = False
    """Shown folded (its title only) until opened: reference material, not results."""


def num(value: object, digits: int = 3, signed: bool = False) -> str:
    """A number as the report prints it: scores with `digits` decimals, ints with thousands separators."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def drop_tone(low: float | None, high: float | None) -> str:
    """A drop whose whole 95% interval is above 0 is forgetting; one entirely below 0 is an improvement."""
    if low is not None and low > 0:
        return "bad"
    if high is not None and high < 0:
        return "good"
    return ""
