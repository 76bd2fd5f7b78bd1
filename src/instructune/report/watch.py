"""Forgetting watched while training: each run's retention drops against step (train_log.jsonl's
`drop/*` records) beside its target validation score, and what the models answer on a kept task."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.ticker import MaxNLocator

from instructune.forgetting.monitor import PREFIX
from instructune.metrics import HEADLINE
from instructune.report.blocks import Answer, Chart, Example, Examples, Section
from instructune.report.data import ForgettingRun, Runs, TrainingRun
from instructune.report.examples import user_turn
from instructune.report.plots import Colors, direction, figure, png_bytes

Series = tuple[str, Sequence[tuple[int, float]]]
"""(run name, (step, value) points)."""


def target_key(runs: Sequence[TrainingRun]) -> str | None:
    """The validation score every curve panel is read against: the first headline metric any run logged,
    else validation loss."""
    logged = {k for r in runs for rec in r.log for k in rec if k.startswith("val_")}
    return next((f"val_{m}" for m in HEADLINE if f"val_{m}" in logged), "val_loss" if "val_loss" in logged else None)


VAL = "val_"
"""Older logs named a validation's retention drops `val_drop/<measure>`; they still read."""


def drop_keys(runs: Sequence[TrainingRun]) -> list[str]:
    """The retention measures watched (`drop/<measure>`), in the order first logged."""
    return list(dict.fromkeys(k.removeprefix(VAL) for r in runs for rec in r.log for k in rec
                              if k.removeprefix(VAL).startswith(PREFIX)))


def drop_curve(run: TrainingRun, key: str) -> list[tuple[int, float]]:
    """(step, drop) of one measure, at validations and between them (`drop/*`; older logs: `val_drop/*` at
    validations), from the untrained model's zero at step 0 (the drops are measured from it)."""
    points = sorted(run.curve(key) + run.curve(VAL + key))
    return [(0, 0.0), *points] if points else []


def retention_curves(panels: Sequence[tuple[str, str, Sequence[Series]]], colors: Colors) -> bytes:
    """One panel per (title, y label, series): a line per run against optimiser step; drop panels carry
    a zero line (above it: forgot)."""
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    with figure(3.8 * ncols, 3.0 * nrows + 0.5, ncols=ncols, nrows=nrows) as (fig, axes):
        for ax, (title, ylabel, series) in zip(axes, panels):
            for name, points in series:
                if points:
                    ax.plot(*zip(*points), color=colors(name), lw=1.8, marker="o", ms=3.5, label=name)
            if title.startswith("drop"):
                ax.axhline(0, color="#94a3b8", lw=1, ls="--")
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("optimiser step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        legend = {}
        for ax in axes:
            legend.update(zip(*ax.get_legend_handles_labels()[::-1]))
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5))
        return png_bytes(fig)


def curve_panels(runs: Sequence[TrainingRun]) -> list[tuple[str, str, list[Series]]]:
    """The target's validation score, then each retention measure's drop, a series per run."""
    panels = []
    key = target_key(runs)
    if key:
        metric = key[len("val_"):]
        panels.append((f"target: validation {metric}", direction(metric), [(r.name, r.curve(key)) for r in runs]))
    for k in drop_keys(runs):
        panels.append((f"drop: {k[len(PREFIX):]}", "drop (forgot \u2191)", [(r.name, drop_curve(r, k)) for r in runs]))
    return panels


def watch_section(runs: Runs, colors: Colors) -> Section | None:
    """Retention curves of every group (stand-alone runs, each study) whose runs watched forgetting."""
    groups = {g: [r for r in rs if drop_keys([r])] for g, rs in runs.groups().items()}
    groups = {g: rs for g, rs in groups.items() if rs}
    if not groups:
        return None
    s = Section("retention-curves", "Forgetting while training",
                "Each retention measure's drop from the untrained model, measured every `retention_every` steps on "
                "small fixed subsets and scored cheaply (classification by likelihood, other tasks by the "
                "cross-entropy of their reference), beside the target's validation score. Drops are in accuracy "
                "for classification tasks and in nats per token for the others.", nav="Watched")
    for group, members in groups.items():
        where = f"the study in {group}/" if group else "training runs"
        s.blocks.append(Chart(f"retention-{(group or 'runs').replace('/', '-')}", retention_curves(
            curve_panels(members), colors), f"{where[:1].upper()}{where[1:]}: a drop line that climbs while the "
            "target keeps improving is forgetting as it happens; the checkpoint to keep is the best target score "
            "before the climb (`select: tradeoff`).", f"retention drops against step ({where})"))
    return s


def answers_block(fg: ForgettingRun) -> list[Examples]:
    """A kept generation task's prompts with the original's answer and each cure's, side by side."""
    out = []
    for key, examples in (fg.data.get("answers") or {}).items():
        items = [Example(str(e["id"]), user_turn(str(e["prompt"])), str(e["prompt"]), str(e["reference"]),
                         [Answer(name, str(text), None, "base" if name == "original" else "tuned")
                          for name, text in e["answers"].items()]) for e in examples]
        if items:
            out.append(Examples(f"{fg.label}: {key}, answers of the original model and of each cure", items,
                                "The first test examples of a task the model should keep, answered greedily."))
    return out
