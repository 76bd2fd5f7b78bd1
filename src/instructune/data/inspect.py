"""What the model is trained on, token by token: `instructune data inspect`, and the report's view.

Every record of a split is encoded exactly as training encodes it (`tokenize.encode_record`: the
chat template, `train_on`, `max_length`), so the counts are the run's own: tokens, trained tokens,
examples cut after their last fitting turn, examples dropped. The first `n` examples are shown
token by token, trained tokens highlighted (colour in a terminal, [[ ]] markers when piped, a
highlighted span in HTML). Special-token strings in the records' content are counted and reported:
training reads them as plain text, which the tokens shown make visible.
"""

from __future__ import annotations

import html

from instructune.data import chat, formats
from instructune.data.tokenize import IGNORE_INDEX, encode_records
from instructune.types import JSON, Record, Tokenizer

GREEN, GREY, RESET = "\x1b[30;42m", "\x1b[2m", "\x1b[0m"


def inspect(tok: Tokenizer, records: list[Record], max_length: int, train_on: str = "all_assistant", n: int = 3,
            source: str = "the records", special_tokens: str = "text") -> JSON:
    """Counts over every record, and the first `n` examples as (token text, trained) pairs; special-token
    strings found in the content of `source` (a file), counted."""
    examples, dropped = encode_records(records, tok, max_length, train_on, special_tokens)
    report = of_examples(tok, examples, dropped, n, records=len(records))
    found = formats.special_strings((text for r in records for _, text in formats.contents(r)),
                                    chat.control_tokens(tok))
    report["special_tokens"] = {source: dict(sorted(found.items()))} if found else {}
    return report


def of_examples(tok: Tokenizer, examples: list[dict], dropped: int, n: int = 3, records: int | None = None) -> JSON:
    """`inspect` of examples already encoded (a training run's own, before packing): what the run writes
    to `data_inspect.json` for the report."""
    totals = {"records": records, "examples": len(examples), "tokens": 0, "trained_tokens": 0, "cut": 0,
              "dropped": dropped}
    shown = []
    for e in examples:
        trained = [label != IGNORE_INDEX for label in e["labels"]]
        totals["tokens"] += len(e["input_ids"])
        totals["trained_tokens"] += sum(trained)
        totals["cut"] += bool(e.get("cut"))
        if len(shown) < n:
            shown.append({"id": e.get("id"), "cut": bool(e.get("cut")),
                          "tokens": [[tok.decode([i]), t] for i, t in zip(e["input_ids"], trained, strict=True)]})
    return {"totals": totals, "examples": shown}


def summary(totals: dict[str, int]) -> str:
    share = totals["trained_tokens"] / max(totals["tokens"], 1)
    source = f"{totals['records']} records -> " if totals.get("records") is not None else ""
    return (f"{source}{totals['examples']} examples, {totals['tokens']:,} tokens, "
            f"{totals['trained_tokens']:,} trained ({share:.1%}); {totals['cut']} cut after the last turn that "
            f"fits, {totals['dropped']} dropped (too long)")


def to_text(report: JSON, colour: bool) -> str:
    """The examples for a terminal: trained tokens on green (tokens alternate shades so their boundaries
    show), or wrapped in [[ ]] when the output is piped."""
    lines = []
    for e in report["examples"]:
        n_trained = sum(t for _, t in e["tokens"])
        lines.append(f"--- {e['id']}: {len(e['tokens'])} tokens, {n_trained} trained" + (" (cut)" if e["cut"] else ""))
        lines.append(_coloured(e["tokens"]) if colour else _marked(e["tokens"]))
    lines.append(summary(report["totals"]))
    note = formats.special_note(report.get("special_tokens") or {})
    return "\n".join(lines + ([note] if note else []))


def _coloured(tokens: list[list]) -> str:
    out = []
    for k, (text, trained) in enumerate(tokens):
        shade = ("\x1b[30;42m", "\x1b[30;102m")[k % 2] if trained else ("\x1b[2m", "\x1b[2;4m")[k % 2]
        out.append(f"{shade}{text}{RESET}")
    return "".join(out)


def _marked(tokens: list[list]) -> str:
    out, inside = [], False
    for text, trained in tokens:
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(text)
    return "".join(out) + ("]]" if inside else "")


def to_html(report: JSON) -> str:
    """The examples as an HTML fragment: each token a span, trained ones highlighted; a title on each
    token gives its position."""
    parts = [f"<p class='inspect-summary'>{html.escape(summary(report['totals']))}</p>"]
    if note := formats.special_note(report.get("special_tokens") or {}):
        parts.append(f"<p class='inspect-warning'>{html.escape(note)}</p>")
    for e in report["examples"]:
        spans = "".join(f"<span class='tok{' trained' if t else ''}' title='{k}'>{html.escape(text)}</span>"
                        for k, (text, t) in enumerate(e["tokens"]))
        n_trained = sum(t for _, t in e["tokens"])
        parts.append(f"<figure class='inspect'><figcaption>{html.escape(str(e['id']))}: {len(e['tokens'])} tokens, "
                     f"{n_trained} trained{' (cut)' if e['cut'] else ''}</figcaption><pre>{spans}</pre></figure>")
    return "\n".join(parts)


PAGE_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;padding:.8rem;border-radius:6px}
.tok{border-right:1px solid #d9dce1}.tok.trained{background:#c8f0d0;color:#064e1b}
figcaption{font-size:.9rem;color:#555}"""


def page(report: JSON, title: str) -> str:
    """A standalone HTML page of `to_html`."""
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style>"
            f"<h1>{html.escape(title)}</h1>{to_html(report)}")
