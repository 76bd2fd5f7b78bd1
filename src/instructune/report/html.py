"""Render the sections into one self-contained HTML page: inline CSS, charts as base64 PNG data URIs,
no external resource of any kind (it opens offline, from an e-mail attachment, years later)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from instructune import __version__
from instructune.report.blocks import Section


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def breakable(text: str) -> Markup:
    """Escaped text that may wrap after a "/": long task names (`news-headlines/headline`) in table
    headers, which would otherwise keep a column (and the table) wider than the page."""
    return Markup("<wbr>").join(escape(part) for part in re.split(r"(?<=/)", str(text)))


def render_html(sections: Sequence[Section], title: str, subtitle: str, roots: Sequence[str]) -> str:

    # autoescape on for every template: prompts and answers are model text, never markup
    env = Environment(loader=PackageLoader("instructune.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    env.filters["data_uri"] = data_uri
    env.filters["breakable"] = breakable
    env.filters["kind"] = lambda block: type(block).__name__.lower()

    return env.get_template("report.html.j2").render(sections=sections, title=title, subtitle=subtitle,
                                                     roots=roots, version=__version__)
