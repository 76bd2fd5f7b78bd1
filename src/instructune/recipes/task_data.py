"""The data of a training run: encoded train examples, fixed validation and test subsets,
the templates that say how to score them, and the keep tasks for replay and regularizers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError


def split_folder(source: str, templates: list[str], seed: int, fractions: list[float],
                 template_file: str | None) -> Path:
    """A built dataset folder: `source` itself if it is one, else built (and cached) from a pack or file."""
    from instructune.data.build import prepare

    path = Path(source)
    if path.is_dir() and (path / "train.jsonl").exists():
        return path
    return prepare(source, templates, seed=seed, fractions=tuple(fractions), template_file=template_file)


def subset(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The same seeded subset every time (sorted back into file order)."""
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
class TaskData:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    val_encoded: list[dict]
    templates: dict[str, Any]
    tok: Any
    pad_id: int
    eval_mode: str
    batch_size: int
    dropped: int = 0
    padding: float = 0.0
    replay: list[dict] | None = None
    keep_encoded: list[dict] = field(default_factory=list)

    @property
    def template_ids(self) -> list[str]:
        return list(self.templates)

    @property
    def task(self) -> str:
        return ",".join(sorted({t.task for t in self.templates.values()}))

    @classmethod
    def build(cls, cfg: Any, tok: Any, log: Callable[[str], None]) -> TaskData:
        from instructune.data.build import dataset_templates, read_split
        from instructune.training.batching import epoch_batches, padding_fraction

        d = cfg.data
        folder = split_folder(d.source, d.templates, d.seed, d.fractions, d.template_file)
        splits = {s: read_split(folder, s) for s in ("train", "validation", "test")}
        for name, rows in splits.items():
            if not rows and name != "test":
                raise InstructuneError(f"the {name} split of {d.source} is empty ({folder}); use more data or "
                                       "change data.fractions.")
        train_rows = subset(splits["train"], d.train_limit, cfg.seed)
        train, dropped = encode_records(train_rows, tok, d.max_length)
        if not train:
            raise InstructuneError(f"no training example fits data.max_length={d.max_length}; raise it.")
        val = subset(splits["validation"], d.val_limit, cfg.seed)
        test = subset(splits["test"], d.test_limit, cfg.seed)
        templates = dataset_templates(folder)
        lengths = [len(e["input_ids"]) for e in train]
        padding = padding_fraction(epoch_batches(lengths, cfg.batch_size, cfg.seed, 0, cfg.group_by_length), lengths)
        keep = []
        for k in cfg.keep:
            kfolder = split_folder(k.source, k.templates, d.seed, d.fractions, k.template_file)
            keep += encode_records(subset(read_split(kfolder, "train"), k.limit, cfg.seed), tok, d.max_length)[0]
        return cls(train=train, val=val, test=test, val_encoded=encode_records(val, tok, d.max_length)[0],
                   templates=templates, tok=tok, pad_id=tok.pad_token_id, eval_mode=cfg.eval_mode,
                   batch_size=cfg.batch_size, dropped=dropped, padding=padding,
                   replay=keep if cfg.replay_fraction > 0 else None, keep_encoded=keep)

    def keep_batches(self) -> Iterable[dict]:
        """Batches of the keep tasks (for regularizers), in a fixed order."""
        from instructune.training.batching import collate

        for i in range(0, len(self.keep_encoded), self.batch_size):
            yield collate(self.keep_encoded[i:i + self.batch_size], self.pad_id)

    def validate(self, model: Any) -> dict[str, float]:
        """Validation loss and each template's task metric on the fixed validation subset."""
        from instructune.training.loop import validation_loss

        scores = {"loss": validation_loss(model, self.val_encoded, self.pad_id, self.batch_size)}
        scores.update(self._metrics(model, self.val))
        return scores

    def test_scores(self, model: Any) -> dict[str, Any]:
        if not self.test:
            return {}
        from instructune.training.loop import validation_loss

        enc, _ = encode_records(self.test, self.tok, 10**6)
        return {"loss": validation_loss(model, enc, self.pad_id, self.batch_size), **self._metrics(model, self.test)}

    def _metrics(self, model: Any, records: list[dict]) -> dict[str, Any]:
        """The template's own metrics per template; their mean across templates at the top level."""
        from instructune.evaluation.evaluate import evaluate_records

        per: dict[str, dict[str, float]] = {}
        for tid, t in self.templates.items():
            rows = [r for r in records if r["template"] == tid]
            if not rows:
                continue
            res = evaluate_records(model, self.tok, rows, task=t.task, choices=t.choices, metrics=t.metrics,
                                   stop=t.stop, mode=self.eval_mode if t.choices else "generate",
                                   batch_size=self.batch_size * 2, max_new_tokens=8 if t.choices else 32)
            per[tid] = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}
        out: dict[str, Any] = {}
        for key in {k for m in per.values() for k in m}:
            vals = [m[key] for m in per.values() if key in m]
            out[key] = sum(vals) / len(vals)
        if len(per) > 1:
            out["per_template"] = per
        return out
