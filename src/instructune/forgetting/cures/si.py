"""Synaptic Intelligence (Zenke, Poole and Ganguli 2017, "Continual learning through synaptic intelligence").

Each weight's importance is how much it contributed to lowering the loss along the training path:

    omega_i  += -g_i * delta_theta_i                      every optimiser step (a path integral)
    Omega_i  += max(omega_i, 0) / (Delta_i^2 + xi)        at consolidate(); then omega = 0, theta* = theta
    penalty   = lam * sum_i Omega_i (theta_i - theta*_i)^2  (lam is c in the paper)

Delta_i is the total change of theta_i over the consolidated task and xi a damping term that keeps
the ratio bounded for weights that barely moved.

A pretrained model has no recorded path on the tasks to keep, so `build` trains briefly on the keep
data (`warmup_steps` of Adam or SGD at `warmup_lr`), accumulating omega, consolidates, and then
restores the original weights bit for bit: theta* are the original weights, and the model that
starts fine-tuning is untouched.

During fine-tuning omega keeps accumulating, so calling `consolidate(model)` at a task boundary
(sequential tasks) adds that task's importance; the penalty always uses the last consolidated Omega.
g is p.grad as the loop leaves it before the optimiser step: the gradient of task loss + penalty,
before clipping (Zenke et al. use the unregularised gradient; the two differ only by the penalty's pull).

omega_i is negative when a weight moved against its gradient (momentum, Adam's per-weight scaling,
noise, the penalty's pull). A negative Omega_i would reward moving that weight away from theta*,
making the penalty unbounded below, so contributions are clamped at 0: importance only accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from instructune.errors import InstructuneError
from instructune.forgetting.cures.base import (
    Cycle,
    KeepBatches,
    Regularizer,
    check,
    count,
    current,
    device_of,
    eval_mode,
    keyword_options,
    on_device,
    positive,
    setting_problems,
    snapshot,
    to_device,
    trainable_parameters,
    unwrap,
    weighted_distance,
)

NAME = "si"


@dataclass
class Options:
    warmup_steps: int = 20
    """Optimiser steps on keep data that measure each weight's importance before fine-tuning starts."""
    warmup_lr: float = 1e-4
    """Learning rate of that warm-up (its weights are put back after it)."""
    xi: float = 1e-3
    """Damping xi in Omega_i += max(omega_i, 0) / (Delta_i^2 + xi): keeps the ratio bounded for weights that
    barely moved."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """The warm-up's optimiser (a throwaway one: the run's own optimiser state is untouched)."""

    def problems(self) -> list[str]:
        out: list[str] = []
        positive(self.warmup_lr, "warmup_lr", out)
        positive(self.xi, "xi", out)
        count(self.warmup_steps, "warmup_steps", out, " (the steps that measure importance)")
        if self.optimizer not in ("adam", "sgd"):
            out.append(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        return out


class SynapticIntelligence(Regularizer):
    name = NAME
    state_groups = ("anchors", "omega", "importance")

    def __init__(self, anchors: dict[str, torch.Tensor], lam: float, xi: float = 1e-3):
        self.anchors, self.lam, self.xi = anchors, lam, xi
        self.omega = {n: torch.zeros_like(a, dtype=torch.float32) for n, a in anchors.items()}
        self.importance = {n: torch.zeros_like(a, dtype=torch.float32) for n, a in anchors.items()}
        self._grads: dict[str, torch.Tensor] | None = None  # this step's g and theta, between before/after_step
        self._before: dict[str, torch.Tensor] | None = None

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.lam * weighted_distance(model, self.anchors, self.importance, self.name)

    def before_step(self, model: nn.Module) -> None:
        params = current(model, self.anchors, self.name)
        self._grads = {n: params[n].grad.detach().float().clone() for n in self.anchors
                       if params[n].grad is not None}
        self._before = {n: params[n].detach().clone() for n in self._grads}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if self._grads is None:  # the step was skipped after before_step (e.g. a non-finite gradient)
            return
        params = current(model, self.anchors, self.name)
        for n, g in self._grads.items():
            p = params[n]
            on_device(self.omega, n, p).sub_(g * (p.float() - self._before[n].float()))
        self._grads = self._before = None

    @torch.no_grad()
    def consolidate(self, model: nn.Module) -> None:
        """Turn the path integral since the last consolidation into importance; re-anchor at the current weights."""
        params = current(model, self.anchors, self.name)
        anchors = {}
        for n in self.anchors:
            p = params[n]
            delta = p.float() - on_device(self.anchors, n, p).float()
            gain = on_device(self.omega, n, p).clamp(min=0) / (delta.pow(2) + self.xi)
            on_device(self.importance, n, p).add_(gain)
            self.omega[n].zero_()
            anchors[n] = p.detach().clone()
        self.anchors = anchors

    @classmethod
    def build(cls, model: nn.Module, keep_batches: KeepBatches, lam: float = 1.0,
              **options: object) -> SynapticIntelligence:
        """`build` with the options as keywords (`SynapticIntelligence.build(model, keep, warmup_steps=3)`)."""
        return build(model, keep_batches, lam, keyword_options(Options, NAME, options))

    def warm_up(self, model: nn.Module, batches: Cycle, steps: int, lr: float, optimizer: str) -> None:
        """Train `steps` steps on keep batches recording omega, consolidate, then put the original weights back."""
        original = self.anchors
        params = current(model, original, self.name)
        trained = [params[n] for n in original]
        saved_grads = {n: params[n].grad for n in original}
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        opt = opt_cls(trained, lr=lr)  # a throwaway optimiser: the run's own optimiser state is untouched
        device, done = device_of(model), 0
        with eval_mode(model):  # importance of the deterministic network; no dropout RNG consumed
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = model(**to_device(next(batches), device)).loss
                if not torch.isfinite(loss):  # a batch with no completion token
                    continue
                loss.backward()
                self.before_step(model)
                opt.step()
                self.after_step(model)
                done += 1
        opt.zero_grad(set_to_none=True)
        if done == 0:
            raise InstructuneError("regularizer 'si': no warm-up batch of the keep data had completion tokens, "
                                   "so importance cannot be measured. Check the keep data and its template.")
        self.consolidate(model)
        with torch.no_grad():
            for n, p in params.items():
                if n in original:
                    p.copy_(original[n])
                    p.grad = saved_grads[n]
        self.anchors = original


def build(model: nn.Module, keep_batches: KeepBatches, lam: float, options: Options) -> SynapticIntelligence:
    """Anchor the trainable weights, measure their importance on a short warm-up on keep data, restore them."""
    check(setting_problems(lam, options), NAME)
    model = unwrap(model)
    reg = SynapticIntelligence(snapshot(trainable_parameters(model, NAME)), lam, options.xi)
    reg.warm_up(model, Cycle(keep_batches, NAME), options.warmup_steps, options.warmup_lr, options.optimizer)
    return reg
