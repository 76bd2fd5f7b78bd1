"""The data of a training run: encoded train examples and the plan of their batches, fixed
validation and test subsets with the templates that score them, and the keep tasks for replay
and regularizers. One task, or a multi-task mixture."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from instructune.data import chat_template
from instructune.data.formats import CONVERSATIONS
from instructune.data.inspect import of_examples
from instructune.data.mixture import build_mixture, task_names
from instructune.data.task import load_split, subset, templates
from instructune.data.tokenize import encode_records
from instructune.errors import InstructuneError
from instructune.evaluation.evaluate import evaluate_records
from instructune.models import resolve_model
from instructune.training.batching import collate, epoch_batches, pack, padding_fraction, validation_loss
from instructune.types import JSON, Tokenizer

if TYPE_CHECKING:
    import torch

    from instructune.data.templates import Template
    from instructune.training.config import TrainConfig


@dataclass
class EvalSet:
    """One (task, template) to score: its validation and test records and the template."""

    name: str
    template: Template
    val: list[dict]
    test: list[dict]


@dataclass
class RunData:
    train: list[dict]
    evals: list[EvalSet]
    tok: Tokenizer
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
    source_name: str = ""
    """The single task's source as it is named in results (a pack's name, a file's stem)."""
    train_on: str = "all_assistant"
    """Conversations: which assistant turns carry loss (validation loss counts the same ones)."""
    special_tokens: str = "text"
    """Special-token strings in the data: text, or refuse (`data.special_tokens_in_content`)."""
    packed_from: int = 0
    """With packing: how many examples the rows of `train` hold."""
    max_length: int = 256
    """data.max_length: conversations are scored cut as they were trained."""
    view: JSON = field(default_factory=dict)
    """The first training examples token by token, trained tokens flagged, and counts over all of them
    (`data.inspect.of_examples`, before packing): the run writes it to data_inspect.json for the report."""

    @property
    def task(self) -> str:
        return ",".join(sorted({e.template.task for e in self.evals}))

    @property
    def template_ids(self) -> list[str]:
        return [e.name for e in self.evals]

    @property
    def tasks(self) -> list[str]:
        """`source/template` of every task trained on (`rotten-tomatoes/sentiment`)."""
        return [e.name if "/" in e.name else f"{self.source_name}/{e.name}" for e in self.evals]

    @cached_property
    def sha256(self) -> str:
        """A hash of the encoded training examples (ids, tokens, labels): what a checkpoint's data position
        points into, so a resume on changed data is noticed."""
        h = hashlib.sha256()
        for e in self.train:
            h.update(json.dumps([e.get("id"), e["input_ids"], e["labels"]]).encode())
        return h.hexdigest()

    @classmethod
    def build(cls, cfg: TrainConfig, tok: Tokenizer, log: Callable[[str], None]) -> RunData:
        d = cfg.data
        packed_from = 0
        if cfg.mixture is not None:
            train, evals, plan, per_epoch, dropped, realised = _mixture(cfg, tok)
            view = of_examples(tok, train, dropped)
        else:
            train, evals, dropped = _single(cfg, tok)
            view = of_examples(tok, train, dropped)
            if cfg.packing:
                packed_from, train = len(train), pack(train, d.max_length)
            lengths = [len(e["input_ids"]) for e in train]

            def plan(epoch: int) -> list[list[int]]:
                return epoch_batches(lengths, cfg.loop.batch_size, cfg.seed, epoch, cfg.loop.group_by_length)
            per_epoch, realised = len(plan(0)), None
        lengths = [len(e["input_ids"]) for e in train]
        keep = []
        for k in cfg.keep:
            rows = subset(load_split(k.task, d.split, "train"), k.limit, cfg.seed)
            keep += encode_records(rows, tok, d.max_length, d.train_on, d.special_tokens_in_content)[0]
        return cls(train=train, evals=evals, tok=tok, eval_mode=cfg.eval_mode, batch_size=cfg.loop.batch_size, plan=plan,
                   batches_per_epoch=per_epoch, dropped=dropped, padding=padding_fraction(plan(0), lengths),
                   replay=keep if cfg.loop.replay_fraction > 0 else None, keep_encoded=keep, realised=realised,
                   source_name=task_names([d.task.source])[0], train_on=d.train_on,
                   special_tokens=d.special_tokens_in_content, packed_from=packed_from,
                   max_length=d.max_length, view=view)

    @property
    def conversations(self) -> bool:
        return any(e.template.format in CONVERSATIONS for e in self.evals)

    def describe(self, total_steps: int) -> list[str]:
        """What the run will train on, in a line or two."""
        cut = sum(1 for e in self.train if e.get("cut"))
        examples = (f"{self.packed_from} training examples packed into {len(self.train)} rows"
                    if self.packed_from else f"{len(self.train)} training examples")
        lines = [f"{examples} ({self.dropped} dropped: too long{f'; {cut} conversations cut after the last turn that fits' if cut else ''}), "
                 f"{total_steps} steps, padding {self.padding:.1%} of token slots"]
        if self.conversations:
            lines.append(f"conversations rendered with the chat template {chat_template.template_sha256(self.tok)}, "
                         f"training on {self.train_on.replace('_', ' ')} turns")
        if self.realised:
            lines.append(f"mixture, examples per task and template in epoch 0: {self.realised(0)}")
        return lines

    def summary(self) -> JSON:
        """What metrics.json records about the data."""
        return {"train_examples": self.packed_from or len(self.train), "dropped_examples": self.dropped,
                "test_examples": self.test_examples, "padding_fraction": self.padding, "templates": self.template_ids,
                "task": self.task, "tasks": self.tasks, "packed_rows": len(self.train) if self.packed_from else None,
                "chat_template_sha256": chat_template.template_sha256(self.tok) if self.conversations else None,
                "train_on": self.train_on if self.conversations else None,
                "mixture_epoch0": self.realised(0) if self.realised else None}

    def keep_batches(self) -> Iterable[dict]:
        """Batches of the keep tasks (for regularizers), in a fixed order."""
        for i in range(0, len(self.keep_encoded), self.batch_size):
            yield collate(self.keep_encoded[i:i + self.batch_size], self.tok.pad_token_id)

    def validate(self, model: torch.nn.Module) -> JSON:
        """Validation loss and every task's metric on the fixed validation subsets."""
        return self._scores(model, [(e, e.val) for e in self.evals], "validation")

    @property
    def test_examples(self) -> int:
        """Records `test_scores` scores, over every task."""
        return sum(len(e.test) for e in self.evals)

    def test_scores(self, model: torch.nn.Module) -> JSON:
        sets = [(e, e.test) for e in self.evals if e.test]
        return self._scores(model, sets, "test") if sets else {}

    def _scores(self, model: torch.nn.Module, sets: list[tuple[EvalSet, list[dict]]], split: str) -> JSON:
        """Loss over all records; each set's own metrics; their macro average at the top level."""
        records = [r for _, recs in sets for r in recs]
        # conversations are cut as in training (one can run to thousands of tokens); a template's prompt is whole
        enc, _ = encode_records(records, self.tok, self.max_length if self.conversations else 10**6, self.train_on,
                                self.special_tokens)
        out: JSON = {"loss": validation_loss(model, enc, self.tok.pad_token_id, self.batch_size,
                                                       desc=f"{split} loss")}
        per: dict[str, dict[str, float]] = {}
        for e, recs in sets:
            t = e.template
            if t.task == "text":  # plain text has no answer to score: its loss is the measure
                continue
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


def check(cfg: TrainConfig) -> None:
    """Build (or find cached) every dataset the run reads, before any model is loaded: a missing file, an
    unknown template or a bad row is reported in seconds, not after the load."""
    split = cfg.data.split
    tasks = [cfg.data.task] if cfg.mixture is None else [t.task_spec() for t in cfg.mixture.tasks]
    # the templates say which tasks are conversations (a hand-made dataset folder may have no stats.json)
    formats = {t.format for task in [*tasks, *(k.task for k in cfg.keep)] for t in templates(task, split).values()}
    if formats & set(CONVERSATIONS) and cfg.data.chat_format == "auto":
        folder = Path(resolve_model(cfg.model))
        if folder.is_dir() and chat_template.saved_template(folder) is None:
            chat_template.require_template(None, cfg.model)


def _single(cfg: TrainConfig, tok: Tokenizer) -> tuple[list[dict], list[EvalSet], int]:
    d = cfg.data
    task, split = d.task, d.split
    splits = {s: load_split(task, split, s) for s in ("train", "validation")}
    # test_limit 0 (a sweep's trial, a study's cure): the test split is not even read
    splits["test"] = load_split(task, split, "test") if d.test_limit != 0 else []
    for name in ("train", "validation"):
        if not splits[name]:
            raise InstructuneError(f"the {name} split of {d.task.source} is empty; use more data or change "
                                   "data.fractions.")
    train, dropped = encode_records(subset(splits["train"], d.train_limit, cfg.seed), tok, d.max_length, d.train_on,
                                    d.special_tokens_in_content)
    if not train:
        raise InstructuneError(f"no training example fits data.max_length={d.max_length}; raise it.")
    val, test = subset(splits["validation"], d.val_limit, cfg.seed), subset(splits["test"], d.test_limit, cfg.seed)
    evals = [EvalSet(tid, t, [r for r in val if r["template"] == tid], [r for r in test if r["template"] == tid])
             for tid, t in templates(task, split).items()]
    return train, [e for e in evals if e.val or e.test], dropped


def _mixture(cfg: TrainConfig, tok: Tokenizer) -> tuple:
    d = cfg.data
    mix = build_mixture(cfg.mixture, tok, d.max_length, cfg.seed, d.split.seed, d.split.fractions, d.train_limit, d.train_on,
                        d.special_tokens_in_content)
    lengths = [len(e["input_ids"]) for e in mix.examples]

    def plan(epoch: int) -> list[list[int]]:
        idx = mix.sampler.epoch(epoch)
        sub = epoch_batches([lengths[i] for i in idx], cfg.loop.batch_size, cfg.seed, epoch, cfg.loop.group_by_length)
        return [[idx[j] for j in b] for b in sub]

    evals = []
    for task, task_templates in mix.templates.items():
        val = subset(mix.val[task], d.val_limit, cfg.seed)
        test = subset(mix.test[task], d.test_limit, cfg.seed)
        for tid, t in task_templates.items():
            evals.append(EvalSet(f"{task}/{tid}", t, [r for r in val if r["template"] == tid],
                                 [r for r in test if r["template"] == tid]))
    per_epoch = math.ceil(mix.sampler.examples_per_epoch / cfg.loop.batch_size)
    return mix.examples, evals, plan, per_epoch, sum(mix.dropped.values()), mix.sampler.realised
