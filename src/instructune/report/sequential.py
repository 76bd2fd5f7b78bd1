"""Sequential training studies (sequential.json): the score matrix, what each task forgot, transfer, stage costs.

    instructune sequential configs/sequential-news.yaml   ->   runs/sequential/sequential.json

The matrix R has T + 1 rows (row 0 = before any training, row j = after stage j, which trains task
j) and T columns (task i); the measures are the ones `instructune sequential` computed from it.
"""

from __future__ import annotations

from instructune.report import plots
from instructune.report.blocks import Block, Card, Cards, Cell, Chart, Section, Table, num
from instructune.report.data import Runs, SequentialRun

MEASURES_NOTE = ("forgetting = a task's best score after it was trained minus its final score (positive = forgot); "
                 "BWT = mean final score minus the score just after training, over tasks 1..T-1 (negative = "
                 "forgot); FWT = mean score on task i after stage i-1 minus before any training (positive = earlier "
                 "stages helped).")


def sequential_section(runs: Runs) -> Section | None:
    if not runs.sequentials:
        return None
    s = Section("sequential", "Sequential training: what each stage kept",
                "Tasks trained one after another, each stage starting from the last one's weights; every task "
                "scored before training and after every stage, on the same examples.", nav="Sequential")
    for sq in runs.sequentials:
        s.blocks += sequential_blocks(sq)
    return s


def sequential_blocks(sq: SequentialRun) -> list[Block]:
    d = sq.data
    tasks, matrix, m = d["tasks"], d["matrix"], d["measures"]
    rows = d.get("rows") or ["before", *[f"after {t}" for t in tasks]]
    metrics = d.get("metrics") or {}
    heads = [f"{t} ({metrics[t]})" if t in metrics else t for t in tasks]
    cards = Cards([
        Card("final average", num(m.get("final_average")), "every task after the last stage", "tuned"),
        Card("average forgetting", num(m.get("average_forgetting"), signed=True), "positive = forgot",
             _tone(m.get("average_forgetting"), up_is_good=False)),
        Card("BWT", num(m.get("bwt"), signed=True), "backward transfer; negative = forgot",
             _tone(m.get("bwt"), up_is_good=True)),
        Card("FWT", num(m.get("fwt"), signed=True), "forward transfer; positive = earlier stages helped",
             _tone(m.get("fwt"), up_is_good=True)),
    ])
    chart = Chart(f"sequential-{sq.label}", plots.score_matrix(matrix, rows, heads),
                  "Read down a column to follow one task through the stages: framed is the task just after its "
                  "own stage; a lighter cell below the frame is forgetting, a darker cell above it is forward "
                  "transfer. Higher is better in every column.", f"scores of every task after each stage ({sq.label})")
    table = Table(["after stage", *heads], [False, *[True] * len(tasks)],
                  [[Cell(str(label)), *[Cell(num(v)) for v in row]] for label, row in zip(rows, matrix)],
                  title=f"{sq.label}/sequential.json: scores")
    blocks = [cards, chart, table, forgetting_table(sq)]
    if d.get("stages"):
        blocks.append(stages_table(sq))
    return blocks


def forgetting_table(sq: SequentialRun) -> Table:
    """Per task: before training, just after its own stage, at the end, and the forgetting measure."""
    d = sq.data
    tasks, matrix, forgot = d["tasks"], d["matrix"], d["measures"]["forgetting"]
    metrics = d.get("metrics") or {}
    rows = []
    for i, task in enumerate(tasks):
        f = forgot[i] if i < len(forgot) else None  # the last task: nothing trained after it to forget it
        rows.append([Cell(task), Cell(str(metrics.get(task, ""))), Cell(num(matrix[0][i])),
                     Cell(num(matrix[i + 1][i])), Cell(num(matrix[-1][i])),
                     Cell(num(f, signed=True), _tone(f, up_is_good=False))])
    return Table(["task", "metric", "before", "after its stage", "final", "forgetting"],
                 [False, False, True, True, True, True], rows, title=f"{sq.label}: forgetting per task",
                 note=MEASURES_NOTE)


def stages_table(sq: SequentialRun) -> Table:
    cols = ["stage", "task", "trainable params", "trainable %", "wall s", "peak MB", "scoring s"]
    rows = [[Cell(num(st.get("stage"))), Cell(str(st.get("task", ""))), Cell(num(st.get("trainable_params"))),
             Cell("\u2013" if st.get("trainable_pct") is None else f"{st['trainable_pct']:.2f}%"),
             Cell(num(st.get("wall_seconds"), digits=1)), Cell(num(st.get("peak_memory_mb"), digits=0)),
             Cell(num(st.get("score_seconds"), digits=1))] for st in sq.data["stages"]]
    return Table(cols, [c != "task" for c in cols], rows, title=f"{sq.label}: cost of each stage",
                 note="wall s and peak MB of each stage's own training process; scoring s: scoring every task after it.")


def _tone(value: float | None, up_is_good: bool) -> str:
    """Card and cell colour: forgetting above 0 is bad; a transfer (BWT, FWT) above 0 is good."""
    if not isinstance(value, (int, float)) or value == 0:
        return ""
    return "good" if (value > 0) == up_is_good else "bad"
