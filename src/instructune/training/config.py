"""Typed configuration of a training run (`instructune train CONFIG.yaml key=value ...`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructune.adapters.registry import NAME_RE as ADAPTER_NAME
from instructune.config import convert, flat, quoted
from instructune.data.mixture import MixtureConfig
from instructune.data.task import SplitSpec, TaskSpec
from instructune.forgetting.cures import REGULARIZERS
from instructune.forgetting.kinds import general_probe, read_measures, text_perplexity
from instructune.forgetting.measures import probe_capacity
from instructune.forgetting.suite import RetentionTask, SuiteSpec, suite_spec
from instructune.methods import MethodConfig
from instructune.types import JSON


@dataclass
class DataConfig:
    """The task to train on and its split, plus lengths and limits. YAML writes the task's and the split's
    fields in `data:` itself (`data: {source: rotten-tomatoes, seed: 3}`); the code reads `data.task`
    and `data.split`, one value each, and passes them whole."""

    task: TaskSpec = flat(lambda: TaskSpec("rotten-tomatoes"))
    """What trains: source, templates, template_file, format (see TaskSpec)."""
    split: SplitSpec = flat(SplitSpec)
    """How its rows are cut: seed, fractions (see SplitSpec)."""
    max_length: int = 256
    """Longest example in tokens; longer prompts lose tokens from their middle, never the completion."""
    train_limit: int | None = None
    """Use at most this many training examples (a seeded subset; with a mixture, per task); null = all."""
    val_limit: int = 64
    """Validation examples used for loss and task metric during training (a fixed subset)."""
    test_limit: int | None = 300
    """Test examples for the final scores (a fixed subset); null = the whole test split."""
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    """Conversations: which assistant turns carry loss (each with its end-of-turn token); system and user
    turns, role markers and padding never do."""
    special_tokens_in_content: Literal["text", "refuse"] = "text"
    """A special-token string written in the data (`<|im_start|>` in a message, prompt, completion or text):
    text = trained as the plain text it reads, never as a control token; refuse = stop at that record, naming it."""
    chat_format: Literal["auto", "chatml", "plain"] = "auto"
    """The chat template conversations (and prompts) are rendered with: auto = the model's own; a model
    without one (a base model) needs chatml or plain, which is saved with the trained model."""

    def problems(self) -> list[str]:
        out = []  # the task and the split checked themselves
        if self.max_length < 16:
            out.append(f"max_length must be at least 16 tokens, got {self.max_length}")
        for name, low in (("train_limit", 1), ("val_limit", 1), ("test_limit", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                out.append(f"{name} must be at least {low}{' (or null for all)' if name != 'val_limit' else ''}, "
                           f"got {value}")
        return out


@dataclass
class OptimConfig:
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 10
    """Linear warmup from 0 to lr over this many optimiser steps."""
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    """Decay after warmup."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""

    def problems(self) -> list[str]:
        out = []
        if not self.lr > 0 or not math.isfinite(self.lr):  # NaN compares False both ways
            out.append(f"lr must be > 0, got {self.lr} (typical: 2e-4 for LoRA, 2e-5 for full)")
        if self.warmup_steps < 0:
            out.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            out.append(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            out.append(f"betas must be two numbers in [0, 1), got {self.betas} (AdamW's usual: [0.9, 0.999])")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            out.append(f"max_grad_norm must be a finite number >= 0 (0 = no clipping), got {self.max_grad_norm}")
        return out


@dataclass
class RegularizerConfig:
    """One forgetting cure of `regularizers:` (`{name: ewc, lam: 1.0, options: {samples: 64}}`): its name, its
    strength and that cure's own options, checked against the cure's `Options` when the config loads."""

    name: str = "ewc"
    """ewc | si | l2sp | distill: a penalty that keeps the model near what it knew."""
    lam: float = 1.0
    """Strength of the penalty."""
    options: Any = None
    """The cure's own options (its `Options` dataclass in forgetting/cures/, e.g. samples for ewc, temperature for
    distill); an option of another cure is refused."""

    def __post_init__(self) -> None:
        if self.options is None and self.name in REGULARIZERS:
            self.options = REGULARIZERS[self.name].options()

    def problems(self) -> list[str]:
        return [] if math.isfinite(self.lam) and self.lam >= 0 else [f"lam must be a finite number >= 0, got {self.lam}"]

    def as_config_dict(self) -> JSON:
        """The YAML form: name, lam and the options as a mapping."""
        return {"name": self.name, "lam": self.lam, "options": dict(vars(self.options)) if self.options else {}}

    @classmethod
    def from_config(cls, data: JSON, prefix: str, problems: list[str]) -> RegularizerConfig | None:
        """Build from the YAML form, reporting an unknown cure, field or option, a wrong type and an out-of-range
        value, each under its own key (`regularizers.0.options.samples`)."""
        seen, name = len(problems), str(data.get("name", "ewc"))
        cure = REGULARIZERS.get(name)
        if cure is None:
            problems.append(f"{prefix}name: unknown regularizer '{name}'; known: {', '.join(REGULARIZERS)}")
        for key in data:
            if key not in ("name", "lam", "options"):
                where = (f"; it is an option of {name}: write it under {prefix}options"
                         if cure and key in cure.option_names() else "")
                problems.append(f"{prefix}{key}: unknown field (fields: name, lam, options){where}")
        ok, lam = convert(float, data.get("lam", 1.0), prefix, problems)
        if not ok:
            problems.append(f"{prefix}lam: {quoted(data.get('lam'))} is not a number (the penalty's strength)")
        raw = data.get("options")
        options = cure.read_options({} if raw is None else raw, f"{prefix}options.", problems) if cure else None
        cfg = cls(name, lam, options) if ok else None
        problems.extend(f"{prefix}{p}" for p in (cfg.problems() if cfg else []))
        return cfg if len(problems) == seen else None


@dataclass
class KeepConfig:
    """A task to keep (its TaskSpec fields, written in the entry itself) and how much of it the cures read."""

    task: TaskSpec = flat()
    """The task: source, templates, template_file, format (see TaskSpec)."""
    limit: int = 256
    """Training-split examples of this task used for importance estimates and replay."""

    def problems(self) -> list[str]:
        return [] if self.limit >= 1 else [f"limit must be at least 1, got {self.limit}"]


@dataclass
class RetentionConfig:
    """What a run keeps an eye on while it trains: the retention suite of `instructune forgetting`, on
    small fixed subsets of validation rows (it chooses best/ and early stops, so it never reads the test
    rows a study reports on), scored cheaply (likelihood and reference cross-entropy, no free generation)."""

    tasks: list[RetentionTask] = field(default_factory=list)
    """Tasks to keep, each a source with one template (`{source: bbc-news, template: topic, limit: 16}`),
    scored on `limit` rows of its validation split."""
    probe_prompts: int = 16
    """General-behaviour probe: general prompts of the shipped list's validation half (0 = off, at most
    32); the original's answers are generated once."""
    probe_tokens: int = 32
    """Longest original answer generated for the probe."""
    text_source: str | None = None
    """Plain-text perplexity probe: a pack (or file) whose validation-split texts are scored (null = off)."""
    text_limit: int = 16
    """Texts in the perplexity probe."""
    generate: bool = False
    """Score generation tasks by generating (ROUGE-L) instead of by the reference's cross-entropy: slower."""
    measures: dict[str, dict] = field(default_factory=dict)
    """Further kinds of retention measure (`forgetting/kinds/`), each by its key with its options
    (`{my-measure: {limit: 8}}`)."""

    def suite_spec(self) -> SuiteSpec:
        """What the run's retention suite measures."""
        return suite_spec(self.tasks, general_probe.Options(self.probe_prompts, self.probe_tokens),
                          text_perplexity.Options(self.text_source, self.text_limit), read_measures(self.measures, "", []))

    def problems(self) -> list[str]:
        out = [] if self.tasks or self.probe_prompts or self.text_source or self.measures else [
            "give at least one measure: tasks, probe_prompts, text_source or measures"]
        read_measures(self.measures, "", out)
        if not 0 <= self.probe_prompts <= probe_capacity():
            out.append(f"probe_prompts must be 0 to {probe_capacity()} (the prompts in each half of the shipped "
                       f"list), got {self.probe_prompts}")
        return out


@dataclass
class LoopConfig:
    """The training loop's schedule: batches, steps, validations, checkpoints, when to stop and which weights
    to keep. Written in the config's top level (`max_steps: 40`), held as `TrainConfig.loop`."""

    batch_size: int = 8
    """Examples per micro-batch; under DDP each process takes its share of them (the global batch stays)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    epochs: int = 1
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    eval_every: int = 50
    """Validate every N optimiser steps (and at each epoch end); 0 = only at epoch ends."""
    early_stopping_patience: int = 0
    """Stop after this many validations without a better validation loss; 0 = never."""
    save_every: int = 50
    """Write a checkpoint every N optimiser steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep; 0 = write none (faster, but the run cannot be resumed)."""
    skip_bad_batches: bool = False
    """On a NaN/inf loss, skip the batch and count it instead of stopping the run."""
    log_every: int = 5
    """Write a train_log.jsonl line every N steps."""
    replay_fraction: float = 0.0
    """Replay: add round(fraction * batch_size) examples of the keep tasks to every micro-batch."""
    retention_every: int = 0
    """Steps between retention measurements; 0 = at validations only."""
    select: Literal["target", "tradeoff"] = "target"
    """Which validated weights best/ keeps: the best target (lowest validation loss), or the best target
    among validations whose retention drops stay within `forgetting_budget` (needs `retention`)."""
    forgetting_budget: Any = None
    """Largest allowed relative drop, the share of the untrained model's score lost (0.05 = 5%): one
    number for every measure, or {measure: number} (measures as in forgetting.json: `bbc-news/topic`,
    `general-probe`, `text-perplexity`)."""
    budget_patience: int = 0
    """With `select: tradeoff`: stop after this many validations in a row over the budget; 0 = never."""

    def problems(self) -> list[str]:
        out = [f"{name} must be at least 1, got {getattr(self, name)}"
               for name in ("batch_size", "grad_accum", "epochs", "log_every") if getattr(self, name) < 1]
        out += [f"{name} must be 0 or more, got {getattr(self, name)}" for name in (
            "eval_every", "save_every", "early_stopping_patience", "keep_checkpoints", "retention_every",
            "budget_patience") if getattr(self, name) < 0]
        if self.max_steps is not None and self.max_steps < 1:
            out.append(f"max_steps must be at least 1 (or null for epochs), got {self.max_steps}")
        if not 0 <= self.replay_fraction <= 1:
            out.append(f"replay_fraction must be between 0 and 1, got {self.replay_fraction}")
        if self.retention_every and self.max_steps and self.retention_every > self.max_steps:
            out.append(f"retention_every {self.retention_every} is larger than the run ({self.max_steps} steps); "
                       "measure more often or drop it")
        budget = self.forgetting_budget
        if isinstance(budget, dict):
            if not budget:
                out.append("forgetting_budget {} bounds no measure; give one number, or {measure: number}")
            out += [p for k, v in budget.items() for p in budget_problems(v, f"forgetting_budget.{k}")]
        elif budget is not None:
            out += budget_problems(budget)
        return out


@dataclass
class TrainConfig:
    model: str = "smollm2-135m-instruct"
    """Model pack, local folder or hub id."""
    output_dir: Path = Path("runs/train")
    """Where the run writes checkpoints, logs, the adapter or model, and metrics.json."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which data and templates to train on (with a mixture: only the split, length and limit fields count;
    train_limit then caps each task)."""
    mixture: MixtureConfig | None = None
    """Several tasks at once (multi-task instruction fine-tuning) instead of data.source."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """What trains: full fine-tuning or a PEFT method."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    loop: LoopConfig = flat(LoopConfig)
    """Batches, steps, validations, checkpoints, early stopping and selection (see LoopConfig)."""
    seed: int = 0
    """Seed of initialisation, data order and dropout."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto (measured on this machine: bf16 where its matmuls are clearly faster than fp32, see
    `instructune doctor`), fp32, or autocast in bf16 (CPU and GPU) or fp16 (GPU only)."""
    threads: int | None = None
    """torch threads; null = the CPUs this process may run on (affinity and cgroup quota), shared
    between the processes of a multi-process launch."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time."""
    packing: bool = False
    """Concatenate examples into rows of data.max_length (batch_size rows per micro-batch): position ids
    restart per example and attention never crosses examples, so each trains as it would alone."""
    attention: Literal["auto", "recompute", "eager", "sdpa"] = "auto"
    """Attention kernel while training: recompute (CPU only: torch's fused forward and a backward that
    rebuilds the attention weights from the saved softmax statistics, keeping what sdpa keeps), eager
    (plain matmul and softmax; keeps every attention weight for the backward pass) or sdpa (torch's
    fused kernel); auto = recompute on CPU, except for prompt-learning methods, whose
    padding masks it cannot take (eager while one micro-batch's attention weights at data.max_length
    stay under 1 GiB, else sdpa); sdpa elsewhere."""
    eval_mode: Literal["generate", "likelihood"] = "generate"
    """How the validation and test task metric is computed for classification templates."""
    regularizers: list[RegularizerConfig] = field(default_factory=list)
    """Forgetting cures added to the loss (ewc, si, l2sp, distill)."""
    keep: list[KeepConfig] = field(default_factory=list)
    """Tasks to keep: the data regularizers estimate importance on and replay draws from."""
    register_as: str | None = None
    """Register the trained adapter under this name (`instructune adapters list`)."""
    retention: RetentionConfig | None = None
    """Measure forgetting while training: the drop of each retention measure from the untrained model,
    every `retention_every` steps and at each validation (train_log.jsonl, TensorBoard)."""
    def problems(self) -> list[str]:
        out = [] if 0 <= self.seed < 2**32 else [f"seed must be in 0..{2**32 - 1}, got {self.seed}"]
        if self.register_as is not None and not ADAPTER_NAME.fullmatch(self.register_as):
            out.append(f"register_as {self.register_as!r} is not a registry name: use 1-64 letters, digits, '.', '_' "
                       "or '-', starting with a letter or digit (example: sentiment-lora)")
        if self.register_as is not None and not self.method.peft:
            out.append(f"register_as keeps adapters, and method {self.method.name} trains no adapter; use a PEFT "
                       "method (lora, ia3, prompt_tuning, prefix_tuning) or drop register_as")
        if self.threads is not None and self.threads < 1:
            out.append(f"threads must be at least 1 (or null for every usable CPU), got {self.threads}")
        if self.loop.replay_fraction > 0 and not self.keep:
            out.append("replay_fraction > 0 needs keep tasks to replay: add keep: [{source: PACK, templates: [ID]}]")
        out += self._retention_problems()
        if self.packing and self.method.prompt_learning:
            out.append(f"packing does not work with {self.method.name}: its virtual tokens would be shared by every "
                       "packed example; set packing: false")
        if self.packing and self.mixture is not None:
            out.append("packing works with one task (data.source); a mixture draws new examples every epoch: set "
                       "packing: false")
        if self.regularizers and not self.keep:
            out.append("regularizers need keep tasks to estimate what to keep: add keep: [{source: PACK}]")
        return out

    def _retention_problems(self) -> list[str]:
        loop, out = self.loop, []
        if loop.select == "tradeoff" and self.retention is None:
            out.append("select: tradeoff needs `retention:` (the measures the budget bounds)")
        if loop.select == "tradeoff" and loop.forgetting_budget is None:
            out.append("select: tradeoff needs forgetting_budget (one number, or {measure: number})")
        if loop.retention_every and self.retention is None:
            out.append("retention_every needs `retention:` (what to measure)")
        if isinstance(loop.forgetting_budget, dict) and self.retention is not None:
            known = retention_measures(self.retention)
            out += [f"forgetting_budget.{k}: not a measure of the retention suite (measures: {', '.join(known)})"
                    for k in loop.forgetting_budget if k not in known]
        return out


def budget_problems(value: object, name: str = "forgetting_budget") -> list[str]:
    """A forgetting budget is a share of the original model's score that may be lost: a finite number, 0 or
    more. A bool is not a number, and NaN is refused: no drop is ever over a NaN budget."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        forms = "" if "." in name else ", or {measure: number}"  # a measure's own budget is one number
        hint = " (YAML 1.1 reads 5e-2 as text: write 0.05 or 5.0e-2)" if isinstance(value, str) else ""
        return [f"{name} must be a number (a share of the original score: 0.05 = 5%){forms}, got "
                f"{quoted(value)}{hint}"]
    if not math.isfinite(value) or value < 0:
        return [f"{name} must be a finite number, 0 or more (0.05: may lose 5% of the original score), got {value}"]
    return []


def retention_measures(r: RetentionConfig) -> list[str]:
    """The measure names a retention suite reports (as forgetting.json names them)."""
    return [f"{t.source}/{t.template}" for t in r.tasks] + list(r.suite_spec().kinds_on())
