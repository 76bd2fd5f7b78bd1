"""What every forgetting regularizer shares: the small interface the training loop calls, and helpers.

The loop calls, for each optimiser step:

    loss = task_loss + sum(r.penalty(model) for r in regularizers)   # already scaled by each lambda
    loss.backward()
    r.before_step(model)        # gradients are in p.grad (before clipping)
    optimizer.step()
    r.after_step(model)

and saves `r.state_dict()` in every checkpoint so a resumed run continues exactly.

Only the parameters that require grad when the regularizer is built are regularized, so the same
code serves full fine-tuning, selective methods and peft models (where only adapter weights train).
Their anchors theta* are detached clones taken at build time, keyed by parameter name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from instructune.errors import InstructuneError

KeepBatches = Callable[[], Iterable[dict]]
"""Returns a fresh iterable of batches (input_ids, attention_mask, labels=-100 off the completion) to keep."""


class Regularizer:
    """A penalty that keeps the model near what it knew. Subclasses set `name` and implement `penalty`.

    `state_groups` names the dict-of-tensor attributes (name -> tensor) saved by `state_dict`.
    """

    name: str = "regularizer"
    state_groups: tuple[str, ...] = ("anchors",)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """A scalar to add to the task loss, already multiplied by the regularizer's strength."""
        raise NotImplementedError

    def before_step(self, model: nn.Module) -> None:
        """Called after backward, before the optimiser step (p.grad holds this step's gradient)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimiser step."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly: `group/param_name -> tensor`."""
        return {f"{g}/{n}": t for g in self.state_groups for n, t in getattr(self, g).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {f"{g}/{n}" for g in self.state_groups for n in getattr(self, g)}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise InstructuneError(
                f"regularizer '{self.name}': the saved state does not match this run (missing: {missing[:4]}, "
                f"unexpected: {extra[:4]}). Resume with the same model, method and regularizers as the "
                "checkpoint, or start a fresh run.")
        for key, value in state.items():
            group, name = key.split("/", 1)
            store = getattr(self, group)
            store[name] = value.to(device=store[name].device, dtype=store[name].dtype).clone()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, so parameter names never carry 'module.'."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def trainable_parameters(model: nn.Module, who: str) -> dict[str, nn.Parameter]:
    """The parameters that require grad, by name (tied weights once): the ones a regularizer protects."""
    params = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
    if not params:
        raise InstructuneError(f"regularizer '{who}': the model has no trainable parameter, so there is nothing "
                               "to regularize. Build regularizers after the fine-tuning method has been applied.")
    return params


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters as they are now (the anchors theta*)."""
    return {n: p.detach().clone() for n, p in params.items()}


def current(model: nn.Module, names: Iterable[str], who: str) -> dict[str, nn.Parameter]:
    """The model's parameters with these names; a clear error if the model was rewrapped since build."""
    params = dict(unwrap(model).named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise InstructuneError(f"regularizer '{who}': parameter {missing[0]} (and {len(missing) - 1} more) is no "
                               "longer in the model. Build the regularizer on the model exactly as it is trained "
                               "(after the method, before any other wrapping).")
    return params


def on_device(store: dict[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """store[name] on like's device, moved once (the model may move after the regularizer is built)."""
    t = store[name]
    if t.device != like.device:
        t = store[name] = t.to(like.device)
    return t


def weighted_distance(model: nn.Module, anchors: dict[str, torch.Tensor],
                      weights: dict[str, torch.Tensor] | None, who: str) -> torch.Tensor:
    """sum_i w_i (theta_i - theta*_i)^2 over the anchored parameters (w = 1 without weights), in float32."""
    params = current(model, anchors, who)
    total = torch.zeros((), device=next(iter(params.values())).device)
    for n in anchors:
        p = params[n]
        sq = (p.float() - on_device(anchors, n, p).float()).pow(2)
        total = total + (sq if weights is None else on_device(weights, n, p) * sq).sum()
    return total


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class Cycle:
    """Keep batches served forever, one at a time: `keep_batches()` is called again at each pass's end.

    `position` counts the batches served, so a resumed run can `seek` to where it stopped.
    """

    def __init__(self, keep_batches: KeepBatches, who: str):
        self.keep_batches, self.who = keep_batches, who
        self.position, self._it = 0, None

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.keep_batches())
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.keep_batches())
            batch = next(self._it, None)
            if batch is None:
                raise InstructuneError(f"regularizer '{self.who}' needs data of the tasks to keep, but the keep "
                                       "data is empty. Set the regularizer's keep data (a data pack or file with "
                                       "examples of what the model should not forget).") from None
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[dict]:
        return self

    def seek(self, position: int) -> None:
        """Start a fresh pass and skip ahead so the next batch is the one served after `position` batches."""
        self.position, self._it = 0, None
        for _ in range(position):
            next(self)


def examples(batches: Iterable[dict]) -> Iterator[dict]:
    """Split batches into single-example batches (batch size 1), skipping rows with no completion token."""
    for batch in batches:
        rows = batch["input_ids"].shape[0]
        for i in range(rows):
            if (batch["labels"][i, 1:] != -100).any():  # position 0 is never predicted (labels shift by one)
                yield {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() and len(v) == rows else v
                       for k, v in batch.items()}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def check(problems: list[str], who: str) -> None:
    """Raise every invalid option at once."""
    if problems:
        raise InstructuneError(f"regularizer '{who}': " + "; ".join(problems) + " (fix regularizers[].options "
                               "in the config, or the matching key=value override).")


def setting_problems(lam: Any, options: Any) -> list[str]:
    """What is wrong with a cure's strength (a finite number >= 0) and its own options."""
    problems: list[str] = []
    positive(lam, "lam", problems, allow_zero=True)
    return problems + options.problems()


def positive(value: Any, name: str, problems: list[str], allow_zero: bool = False) -> None:
    """A finite number, > 0 (or >= 0 with allow_zero); a bool is not a number."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        problems.append(f"{name} must be a number {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


def count(value: Any, name: str, problems: list[str], why: str = "") -> None:
    """An integer >= 1 (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f"{name} must be an integer >= 1{why}, got {value!r}")


def accepted(options: type) -> str:
    """A cure's options with their defaults, for error messages: `samples (default 128), ...`."""
    fields = dataclasses.fields(options)
    return ", ".join(f"{f.name} (default {f.default!r})" for f in fields) or "no options"


def keyword_options(options: type, who: str, keywords: dict[str, Any]) -> Any:
    """A cure's `Options` from keywords (`samples=8`); an option it does not have is an error naming those it has."""
    unknown = sorted(set(keywords) - {f.name for f in dataclasses.fields(options)})
    if unknown:
        raise InstructuneError(f"regularizer '{who}': unknown option(s) {', '.join(unknown)}; it accepts "
                               f"{accepted(options)}. Fix regularizers[].options in the config.")
    return options(**keywords)
