"""Reports of run folders: a self-contained HTML page and a Markdown summary.

    instructune report runs/demo --out runs/demo/report

`data` finds and reads the files runs write, `sections` (with `studies`, `sequential`, `examples`)
turns them into tables, charts and examples, `html` and `markdown` render those same blocks.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from instructune.report.blocks import Chart, Section
from instructune.report.data import Runs, discover
from instructune.report.html import render_html
from instructune.report.markdown import FILES, render_markdown
from instructune.report.sections import build_sections


def build_report(run_dirs: list[Path], out: Path) -> dict[str, Path]:
    """Write out/report.html, out/report.md and out/report_files/*.png; returns {"html": ..., "md": ...}."""
    runs = discover([Path(d) for d in run_dirs])
    sections = build_sections(runs)
    charts = _name_charts(sections)
    out = Path(out)
    (out / FILES).mkdir(parents=True, exist_ok=True)
    for chart in charts:
        (out / FILES / f"{chart.name}.png").write_bytes(chart.png)
    title = "instructune report"
    subtitle = f"{_summary(runs)} \u00b7 made {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    roots = [str(r) for r in runs.roots]
    paths = {"html": out / "report.html", "md": out / "report.md"}
    paths["html"].write_text(render_html(sections, title, subtitle, roots), encoding="utf-8")
    paths["md"].write_text(render_markdown(sections, title, subtitle), encoding="utf-8")
    return paths


def _name_charts(sections: list[Section]) -> list[Chart]:
    """File-safe, unique chart names (they become report_files/<name>.png)."""
    charts, seen = [], set()
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Chart):
                stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in b.name).strip("-") or "chart"
                name, n = stem, 2
                while name in seen:
                    name, n = f"{stem}-{n}", n + 1
                seen.add(name)
                b.name = name
                charts.append(b)
    return charts


def _summary(runs: Runs) -> str:
    parts = [(len(runs.trainings), "training run", "training runs"), (len(runs.evals), "evaluation", "evaluations"),
             (len(runs.forgettings), "forgetting study", "forgetting studies"),
             (len(runs.sequentials), "sequential study", "sequential studies")]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in parts if n) or "run information"
