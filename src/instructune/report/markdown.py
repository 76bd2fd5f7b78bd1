"""Render the sections as Markdown: the same tables, charts as PNG files in `report_files/` next to it."""

from __future__ import annotations

from collections.abc import Sequence

from instructune.report.blocks import Cards, Chart, Details, Examples, KeyValues, Section, Table, Tokens

FILES = "report_files"


def cell(text: str) -> str:
    """Markdown-table safe: pipes escaped, line breaks flattened."""
    return " ".join(str(text).replace("|", "\\|").split())


def table(t: Table) -> list[str]:
    lines = [f"**{cell(t.title)}**", ""] if t.title else []
    lines.append("| " + " | ".join(cell(c) for c in t.columns) + " |")
    lines.append("|" + "".join("---:|" if n else "---|" for n in t.numeric))
    lines += ["| " + " | ".join(cell(f"{c.text} {c.sub}" if c.sub else c.text) for c in row) + " |"
              for row in t.rows]
    if t.note:
        lines += ["", f"_{t.note}_"]
    return [*lines, ""]


def examples(block: Examples) -> list[str]:
    lines = [f"### {block.title}", ""]
    if block.note:
        lines += [f"_{block.note}_", ""]
    for e in block.examples:
        lines += [f"**id {cell(e.id)}**", ""]
        lines += ["> " + line for line in e.prompt.splitlines() or [""]]
        lines += ["", f"reference: {cell(e.reference)}", "", "| setting | answer | |", "|---|---|---|"]
        for a in e.answers:
            mark = "" if a.correct is None else ("\u2713" if a.correct else "\u2717")
            lines.append(f"| {cell(a.setting)} | {cell(a.text) or '(empty)'} | {mark} |")
        lines.append("")
    return lines


def render_block(b: object) -> list[str]:
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Chart):
        return [f"![{b.alt}]({FILES}/{b.name}.png)", "", f"_{b.caption}_", ""]
    if isinstance(b, Cards):
        return [" \u00b7 ".join(f"**{c.label}**: {c.value} ({c.sub})" if c.sub else f"**{c.label}**: {c.value}"
                                for c in b.cards), ""]
    if isinstance(b, KeyValues):
        head = [f"**{b.title}**", ""] if b.title else []
        return [*head, *[f"- {k}: `{v}`" for k, v in b.pairs], ""]
    if isinstance(b, Details):
        return [f"<details><summary>{b.summary}</summary>", "", "```", b.text.rstrip(), "```", "", "</details>", ""]
    if isinstance(b, Examples):
        return examples(b)
    if isinstance(b, Tokens):
        return [f"**{b.title}**", "", "```", b.text.rstrip(), "```", ""]
    raise TypeError(f"no Markdown for {type(b).__name__}")


def render_markdown(sections: Sequence[Section], title: str, subtitle: str) -> str:
    lines = [f"# {title}", "", subtitle, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        # a collapsed section is folded here too (GitHub and most viewers render <details>)
        lines += ["<details><summary>" + s.lead + "</summary>", ""] if s.collapsed else [s.lead, ""]
        for b in s.blocks:
            lines += render_block(b)
        lines += ["</details>", ""] if s.collapsed else []
    return "\n".join(lines).rstrip() + "\n"
