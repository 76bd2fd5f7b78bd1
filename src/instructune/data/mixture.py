"""Multi-task mixtures: several tasks (packs or files, each with its templates) drawn into one epoch.

A task of n_i training examples is drawn with probability p_i, by one of four strategies:

    proportional   p_i = n_i / sum_j n_j                              (as if the data were concatenated)
    capped         p_i = min(n_i, K) / sum_j min(n_j, K)              (FLAN / T5 examples-proportional
                                                                       mixing with cap K: a huge task
                                                                       cannot drown the others)
    temperature    p_i = n_i^(1/T) / sum_j n_j^(1/T)                  (T = 1 proportional, T -> inf uniform;
                                                                       mT5 / XLM use T around 2 to 5)
    weights        p_i = w_i / sum_j w_j                              (explicit)

An epoch is `examples_per_epoch` draws (default: sum_i n_i, or sum_i min(n_i, K) for `capped`).
Each draw picks a task by p_i, then one of its templates (evenly, or by `template_weights`),
then the next example of that (task, template) pool: a pool is walked in a shuffled order
without replacement and reshuffled only once exhausted, so an example repeats within an epoch
only when its task is upsampled past its size. A down-sampled task sees a fresh random subset
each epoch.

The draws of epoch e depend only on (seed, e): a resumed run recomputes the epoch and skips
the micro-batches it has already consumed.

    probs = task_probabilities([10, 100, 1000], "capped", cap=100, temperature=2.0, weights=None)
    # -> [10/210, 100/210, 100/210]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Literal, NamedTuple

from instructune.data.task import SplitSpec, TaskSpec, dataset, load_split, subset
from instructune.data.task import templates as task_templates
from instructune.data.templates import Template
from instructune.data.tokenize import encode_records
from instructune.errors import InstructuneError
from instructune.types import Tokenizer

STRATEGIES = ("proportional", "capped", "temperature", "weights")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class MixtureTask(TaskSpec):
    """One task of the mixture (TaskSpec fields) and how often it is drawn."""

    weight: float | None = None
    """Relative weight of the task; used by strategy `weights` only."""
    template_weights: dict[str, float] | None = None
    """Relative weight of each template of the task (all of them); null = templates drawn evenly."""


@dataclass
class MixtureConfig:
    tasks: list[MixtureTask]
    """The tasks to mix, each a source with its templates."""
    strategy: Literal["proportional", "capped", "temperature", "weights"] = "capped"
    """How often each task is drawn: proportional to size, capped (FLAN/T5), temperature, or weights."""
    cap: int = 3000
    """capped: a task counts as at most this many examples (K in min(n_i, K))."""
    temperature: float = 2.0
    """temperature: T in p_i ~ n_i^(1/T); 1 = proportional, larger flattens towards uniform."""
    examples_per_epoch: int | None = None
    """Draws per epoch; null = sum of task sizes (each capped at `cap` for strategy capped)."""

    def problems(self) -> list[str]:
        out = []
        if not self.tasks:
            out.append("tasks: give at least one task (a `source` with its `templates`)")
        if self.cap < 1:
            out.append(f"cap must be at least 1 example, got {self.cap} (FLAN uses 3000)")
        if self.temperature <= 0:
            out.append(f"temperature must be > 0, got {self.temperature} (1 = proportional, 2 to 5 is usual)")
        if self.examples_per_epoch is not None and self.examples_per_epoch < 1:
            out.append(f"examples_per_epoch must be at least 1 (or null for the default), got "
                       f"{self.examples_per_epoch}")
        if self.strategy == "weights":
            missing = [f"tasks[{i}]" for i, t in enumerate(self.tasks) if t.weight is None]
            if missing:
                out.append(f"strategy 'weights' needs a `weight` on every task; missing on {', '.join(missing)}")
            elif sum(t.weight for t in self.tasks) <= 0:  # type: ignore[misc]
                out.append("strategy 'weights': the task weights sum to 0; give at least one a positive weight")
        for i, t in enumerate(self.tasks):
            if t.weight is not None and t.weight < 0:
                out.append(f"tasks[{i}].weight must be >= 0, got {t.weight}")
            out += [f"tasks[{i}].{p}" for p in _template_weight_problems(t)]
        return out


def _template_weight_problems(task: MixtureTask) -> list[str]:
    tw = task.template_weights
    if tw is None:
        return []
    out = []
    bad = {k: v for k, v in tw.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0}
    if bad:
        out.append(f"template_weights must be numbers >= 0, got {bad}")
    elif sum(tw.values()) <= 0:
        out.append("template_weights sum to 0; give at least one template a positive weight")
    unknown = [k for k in tw if task.templates and k not in task.templates]
    if unknown:
        out.append(f"template_weights names {', '.join(unknown)}, not in templates {task.templates}")
    return out


def task_probabilities(sizes: Sequence[int], strategy: str, cap: int, temperature: float,
                       weights: Sequence[float] | None) -> list[float]:
    """p_i of each task by the strategy's formula (see the module docstring); an empty task gets 0."""
    if strategy == "proportional":
        raw = [float(n) for n in sizes]
    elif strategy == "capped":
        raw = [float(min(n, cap)) for n in sizes]
    elif strategy == "temperature":
        # n^(1/T) in log space, scaled by the largest: no overflow for small T
        logs = [math.log(n) if n > 0 else -math.inf for n in sizes]
        top = max(logs, default=0.0)
        raw = [math.exp((v - top) / temperature) if n > 0 else 0.0 for v, n in zip(logs, sizes)]
    elif strategy == "weights":
        if weights is None or len(weights) != len(sizes):
            raise InstructuneError("mixture strategy 'weights' needs one `weight` per task; give each task a "
                                   "`weight` or choose strategy capped, proportional or temperature.")
        raw = [float(w) if n > 0 else 0.0 for w, n in zip(weights, sizes)]
    else:
        raise InstructuneError(f"unknown mixture strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
    total = sum(raw)
    if total <= 0:
        raise InstructuneError(f"mixture strategy '{strategy}' gives every task probability 0 (sizes {list(sizes)});"
                               " give the tasks data and at least one a positive weight.")
    return [r / total for r in raw]


def default_epoch_size(sizes: Sequence[int], strategy: str, cap: int) -> int:
    """Draws per epoch when none are given: every example once, each task capped at `cap` for `capped`."""
    return sum(min(n, cap) for n in sizes) if strategy == "capped" else sum(sizes)


class MixtureSampler:
    """Seeded draws of example indices for each epoch of a multi-task mixture.

    `pools[t][template]` are the indices (into one flat example list) of task t under that
    template; `probabilities[t]` is p_t; `template_weights[t]` maps each template of task t to
    a relative weight, or is None for even sampling.
    """

    def __init__(self, pools: list[dict[str, list[int]]], probabilities: list[float],
                 template_weights: list[dict[str, float] | None], examples_per_epoch: int, seed: int,
                 names: list[str] | None = None) -> None:
        if not len(pools) == len(probabilities) == len(template_weights):
            raise ValueError(f"pools ({len(pools)}), probabilities ({len(probabilities)}) and template_weights "
                             f"({len(template_weights)}) need one entry per task")
        if examples_per_epoch < 1:
            raise ValueError(f"examples_per_epoch must be at least 1, got {examples_per_epoch}")
        self.names = list(names) if names is not None else [str(t) for t in range(len(pools))]
        self.pools = pools
        self.probabilities = list(probabilities)
        self.examples_per_epoch = examples_per_epoch
        self.seed = seed
        self._templates = [list(p) for p in pools]
        self._template_cum = [self._template_cum_weights(t, w) for t, w in enumerate(template_weights)]
        self._task_cum = list(accumulate(self.probabilities))
        self._cache: tuple[int, list[tuple[int, int, int]]] | None = None

    def _template_cum_weights(self, t: int, weights: dict[str, float] | None) -> list[float]:
        """Cumulative weights over the templates of task t, checked against its pools."""
        tids = self._templates[t]
        w = [1.0] * len(tids) if weights is None else [float(weights.get(tid, -1)) for tid in tids]
        where = f"mixture task '{self.names[t]}'"
        if weights is not None and (set(weights) != set(tids) or min(w) < 0):
            raise InstructuneError(f"{where}: template_weights {dict(weights)} must give a weight >= 0 to each of "
                                   f"its templates {tids} (0 leaves one out), and no other.")
        if self.probabilities[t] > 0:
            if sum(w) <= 0:
                raise InstructuneError(f"{where}: no template with a positive weight; fix its template_weights.")
            empty = [tid for tid, x in zip(tids, w) if x > 0 and not self.pools[t][tid]]
            if empty:
                raise InstructuneError(f"{where}: template{'s' * (len(empty) > 1)} {', '.join(empty)} "
                                       f"ha{'ve' if len(empty) > 1 else 's'} no training examples (too long for "
                                       f"max_length?); raise max_length or leave {'them' if len(empty) > 1 else 'it'} out of its templates.")
        return list(accumulate(w))

    def _draws(self, epoch: int) -> list[tuple[int, int, int]]:
        """(task, template number, example index) of every draw of the epoch, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = random.Random(f"mixture:{self.seed}:{epoch}")  # str seeds hash with sha512: stable across runs
        tasks = rng.choices(range(len(self.pools)), cum_weights=self._task_cum, k=self.examples_per_epoch)
        order: dict[tuple[int, int], list[int]] = {}  # (task, template) -> shuffled pool
        cursor: dict[tuple[int, int], int] = {}
        out = []
        for t in tasks:
            k = rng.choices(range(len(self._templates[t])), cum_weights=self._template_cum[t])[0]
            pos = cursor.get((t, k), 0)
            if pos == 0:  # first use, or the pool is exhausted: a fresh pass in a new order
                order[t, k] = list(self.pools[t][self._templates[t][k]])
                rng.shuffle(order[t, k])
            out.append((t, k, order[t, k][pos]))
            cursor[t, k] = (pos + 1) % len(order[t, k])
        self._cache = (epoch, out)
        return out

    def epoch(self, epoch: int) -> list[int]:
        """The example indices drawn for `epoch`, in training order; the same for the same (seed, epoch)."""
        return [i for _, _, i in self._draws(epoch)]

    def realised(self, epoch: int) -> dict[str, dict[str, int]]:
        """How many draws of `epoch` went to each task and template (zeros included)."""
        counts = {name: dict.fromkeys(tids, 0) for name, tids in zip(self.names, self._templates)}
        for t, k, _ in self._draws(epoch):
            counts[self.names[t]][self._templates[t][k]] += 1
        return counts


class Mixture(NamedTuple):
    examples: list[dict]
    """Encoded train examples of every task: id, input_ids, labels, task, template."""
    sampler: MixtureSampler
    """Draws indices into `examples` for each epoch."""
    val: dict[str, list[dict]]
    """Validation records per task (each keeps its `template`)."""
    test: dict[str, list[dict]]
    """Test records per task."""
    templates: dict[str, dict[str, Template]]
    """The templates of each task: task -> template id -> Template."""
    dropped: dict[str, int]
    """Train examples of each task left out because even a truncated prompt did not fit max_length."""


def task_names(sources: Sequence[str]) -> list[str]:
    """A short name per task: the pack name or file stem, with -2, -3 ... on repeats."""
    names: list[str] = []
    for source in sources:
        base = Path(source.rstrip("/")).name
        base = next((base[:-len(s)] for s in DATA_SUFFIXES if base.endswith(s)), base) or source
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def build_mixture(cfg: MixtureConfig, tokenizer: Tokenizer, max_length: int, seed: int, data_seed: int,
                  fractions: Sequence[float], train_limit: int | None = None,
                  train_on: str = "all_assistant", special_tokens: str = "text") -> Mixture:
    """Load, split and encode every task, and a sampler over their train examples.

    `data_seed` seeds each task's train/validation/test split; `seed` seeds the draws and the subset
    of at most `train_limit` training rows kept per task.
    """
    names = task_names([t.source for t in cfg.tasks])
    examples: list[dict] = []
    pools: list[dict[str, list[int]]] = []
    mix = Mixture(examples, None, {}, {}, {}, {})  # type: ignore[arg-type]  # sampler set below
    for name, task in zip(names, cfg.tasks):
        split = SplitSpec(data_seed, list(fractions))
        templates = _chosen_templates(name, task, task_templates(task, split), dataset(task, split))
        splits = {s: [r for r in load_split(task, split, s) if r["template"] in templates]
                  for s in ("train", "validation", "test")}
        pool: dict[str, list[int]] = {tid: [] for tid in templates}
        encoded, mix.dropped[name] = encode_records(subset(splits["train"], train_limit, seed), tokenizer, max_length,
                                                    train_on, special_tokens)
        for e in encoded:
            pool[e["template"]].append(len(examples))
            examples.append({**e, "task": name})
        if not any(pool.values()):
            raise InstructuneError(f"mixture task '{name}' ({task.source}) has no training example that fits "
                                   f"max_length={max_length}; raise max_length or give it more data.")
        pools.append(pool)
        mix.val[name], mix.test[name], mix.templates[name] = splits["validation"], splits["test"], templates
    sizes = [sum(len(v) for v in p.values()) for p in pools]
    probs = task_probabilities(sizes, cfg.strategy, cfg.cap, cfg.temperature, [t.weight or 0.0 for t in cfg.tasks])
    per_epoch = cfg.examples_per_epoch or default_epoch_size(sizes, cfg.strategy, cfg.cap)
    sampler = MixtureSampler(pools, probs, [t.template_weights for t in cfg.tasks], per_epoch, seed, names)
    return mix._replace(sampler=sampler)


def _chosen_templates(name: str, task: MixtureTask, available: dict[str, Template],
                      folder: Path) -> dict[str, Template]:
    """The task's templates (all when none are named); only a prebuilt folder can lack a named one."""
    unknown = [t for t in task.templates if t not in available]
    if unknown:
        raise InstructuneError(f"mixture task '{name}': template{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                               f"not in {folder} (built with {', '.join(available)}); fix its `templates`.")
    return {tid: available[tid] for tid in (task.templates or available)}
