"""Text cleaning shared by the pack readers."""

from __future__ import annotations

import html
import re


def clean(text: str) -> str:
    """Unescape HTML entities and collapse whitespace (reviews are one paragraph)."""
    return " ".join(html.unescape(text).split())


def clean_paragraphs(text: str) -> str:
    """Like `clean`, but keeps paragraph breaks (news articles)."""
    paragraphs = (clean(p) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)
