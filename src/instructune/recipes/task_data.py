"""The data of a training run: encoded train examples and the plan of their batches, fixed
validation and test subsets with the templates that score them, and the keep tasks for replay
and regularizers. One dataset, or a multi-task mixture."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from instructune.errors import InstructuneError


def subset(records: list, limit: int | None, seed: int) -> list:
    """The same seeded subset every time (kept in file order)."""
    if limit is None or len(records) <= limit:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def encode_records(records: list[dict], tok: Any, max_length: int) -> tuple[list[dict], int]:
    from instructune.data.tokenize import encode

    out, dropped = [], 0
    for r in records:
        e = encode(tok, r["prompt"], r["completion"], max_length)
        if e is None:
            dropped += 1
        else:
            out.append({"id": r["id"], **e})
    return out, dropped


@dataclass
class EvalSet:
    """One (task, template) to score: its validation and test records and the template."""

    name: str
    template: Any
    val: list[dict]
    test: list[dict]


@dataclass
class TaskData:
    train: list[dict]
    evals: list[EvalSet]
    tok: Any
    eval_mode: str
    batch_size: int
    plan: Callable[[int], list[list[int]]]
    """epoch -> its micro-batches (lists of indices into `train`); the same for a seed, so resumable."""
    batches_per_epoch: int
    dropped: int = 0
    padding: float = 0.0
    replay: list[dict] | None = None
    keep_encoded: list[dict] = field(default_factory=list)
    realised: Callable[[int], dict] | None = None
    """Mixtures: epoch -> examples drawn per task and template."""

    @property
    def task(self) -> str:
        return ",".join(sorted({e.template.task for e in self.evals}))

    @property
    def template_ids(self) -> list[str]:
        return [e.name for e in self.evals]

    @classmethod
    def build(cls, cfg: Any, tok: Any, log: Callable[[str], None]) -> TaskData:
        from instructune.training.batching import epoch_batches, padding_fraction

        d = cfg.data
        if cfg.mixture is not None:
            train, evals, plan, per_epoch, dropped, realised = _mixture(cfg, tok)
        else:
            train, evals, dropped = _single(cfg, tok)
            lengths = [len(e["input_ids"]) for e in train]

            def plan(epoch: int) -> list[list[int]]:
                return epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
            per_epoch, realised = len(plan(0)), None
        lengths = [len(e["input_ids"]) for e in train]
        keep = []
        for k in cfg.keep:
            from instructune.data.build import dataset_folder, read_split
            folder = dataset_folder(k.source, k.templates, d.seed, d.fractions, k.template_file)
            keep += encode_records(subset(read_split(folder, "train"), k.limit, cfg.seed), tok, d.max_length)[0]
        return cls(train=train, evals=evals, tok=tok, eval_mode=cfg.eval_mode, batch_size=cfg.batch_size, plan=plan,
                   batches_per_epoch=per_epoch, dropped=dropped, padding=padding_fraction(plan(0), lengths),
                   replay=keep if cfg.replay_fraction > 0 else None, keep_encoded=keep, realised=realised)

    def keep_batches(self) -> Iterable[dict]:
        """Batches of the keep tasks (for regularizers), in a fixed order."""
        from instructune.training.batching import collate

        for i in range(0, len(self.keep_encoded), self.batch_size):
            yield collate(self.keep_encoded[i:i + self.batch_size], self.tok.pad_token_id)

    def validate(self, model: Any) -> dict[str, Any]:
        """Validation loss and every task's metric on the fixed validation subsets."""
        return self._scores(model, [(e, e.val) for e in self.evals])

    def test_scores(self, model: Any) -> dict[str, Any]:
        sets = [(e, e.test) for e in self.evals if e.test]
        return self._scores(model, sets) if sets else {}

    def _scores(self, model: Any, sets: list[tuple[EvalSet, list[dict]]]) -> dict[str, Any]:
        """Loss over all records; each set's own metrics; their macro average at the top level."""
        from instructune.evaluation.evaluate import evaluate_records
        from instructune.training.loop import validation_loss

        records = [r for _, recs in sets for r in recs]
        enc, _ = encode_records(records, self.tok, 10**6)
        out: dict[str, Any] = {"loss": validation_loss(model, enc, self.tok.pad_token_id, self.batch_size)}
        per: dict[str, dict[str, float]] = {}
        for e, recs in sets:
            t = e.template
            res = evaluate_records(model, self.tok, recs, task=t.task, choices=t.choices, metrics=t.metrics,
                                   stop=t.stop, mode=self.eval_mode if t.choices else "generate",
                                   batch_size=self.batch_size * 2, max_new_tokens=8 if t.choices else 32)
            per[e.name] = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}
        for key in sorted({k for m in per.values() for k in m}):
            vals = [m[key] for m in per.values() if key in m]
            out[key] = sum(vals) / len(vals)
        if len(per) > 1:
            out["per_task"] = per
        return out


def _single(cfg: Any, tok: Any) -> tuple[list[dict], list[EvalSet], int]:
    from instructune.data.build import dataset_folder, dataset_templates, read_split
    from instructune.data.templates import load_templates

    d = cfg.data
    templates = d.templates or list(load_templates(d.template_file or d.source))
    folder = dataset_folder(d.source, templates, d.seed, d.fractions, d.template_file)
    splits = {s: read_split(folder, s) for s in ("train", "validation", "test")}
    for name in ("train", "validation"):
        if not splits[name]:
            raise InstructuneError(f"the {name} split of {d.source} is empty ({folder}); use more data or change "
                                   "data.fractions.")
    train, dropped = encode_records(subset(splits["train"], d.train_limit, cfg.seed), tok, d.max_length)
    if not train:
        raise InstructuneError(f"no training example fits data.max_length={d.max_length}; raise it.")
    val, test = subset(splits["validation"], d.val_limit, cfg.seed), subset(splits["test"], d.test_limit, cfg.seed)
    evals = [EvalSet(tid, t, [r for r in val if r["template"] == tid], [r for r in test if r["template"] == tid])
             for tid, t in dataset_templates(folder).items()]
    return train, [e for e in evals if e.val or e.test], dropped


def _mixture(cfg: Any, tok: Any) -> tuple:
    import math

    from instructune.data.mixture import build_mixture
    from instructune.training.batching import epoch_batches

    d = cfg.data
    mix = build_mixture(cfg.mixture, tok, d.max_length, cfg.seed, d.seed, d.fractions)
    lengths = [len(e["input_ids"]) for e in mix.examples]

    def plan(epoch: int) -> list[list[int]]:
        idx = mix.sampler.epoch(epoch)
        sub = epoch_batches([lengths[i] for i in idx], cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        return [[idx[j] for j in b] for b in sub]

    evals = []
    for task, templates in mix.templates.items():
        val = subset(mix.val[task], d.val_limit, cfg.seed)
        test = subset(mix.test[task], d.test_limit, cfg.seed)
        for tid, t in templates.items():
            evals.append(EvalSet(f"{task}/{tid}", t, [r for r in val if r["template"] == tid],
                                 [r for r in test if r["template"] == tid]))
    per_epoch = math.ceil(mix.sampler.examples_per_epoch / cfg.batch_size)
    return mix.examples, evals, plan, per_epoch, sum(mix.dropped.values()), mix.sampler.realised
