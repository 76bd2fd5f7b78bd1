"""Elastic Weight Consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks").

A quadratic pull toward the original weights theta*, stiffer where the tasks to keep are sensitive:

    penalty = lam / 2 * sum_i F_i (theta_i - theta*_i)^2

with F the diagonal empirical Fisher information of the keep data, estimated at theta*:

    F_i = 1/N sum_{n=1..N} (d log p(y_n | x_n) / d theta_i)^2

over N = `samples` single examples. Each example's gradient is taken on its own (batch size 1): the
empirical Fisher is the mean of squared per-example gradients, not the square of a batch-mean gradient
(which cancels noise across examples and underestimates F). log p(y|x) is the example's mean
log-likelihood per completion token (minus the model's loss), so F does not grow with completion length.

`normalize: true` divides F by its mean over all trainable elements (mean F = 1), so lam reads the same
across models and data sizes (the penalty becomes lam/2 * sum_i (F_i / mean F) (theta_i - theta*_i)^2);
off by default, as in the paper. The raw F is written to `fisher_path` (safetensors, keyed by parameter
name) and read back from there when that file exists, so one estimate serves many runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from instructune.errors import InstructuneError
from instructune.forgetting.cures.base import (
    KeepBatches,
    Regularizer,
    check,
    count,
    device_of,
    eval_mode,
    examples,
    keyword_options,
    setting_problems,
    snapshot,
    to_device,
    trainable_parameters,
    unwrap,
    weighted_distance,
)

NAME = "ewc"
FISHER_FORMAT = "instructune-ewc-fisher"


@dataclass
class Options:
    samples: int = 128
    """Keep examples the Fisher is estimated on, one at a time (N in the formula)."""
    fisher_path: str | None = None
    """A safetensors file for the Fisher: read when it exists, else computed and written there (null = not kept)."""
    normalize: bool = False
    """Divide F by its mean over every trainable element, so lam reads the same across models and data sizes."""

    def problems(self) -> list[str]:
        out: list[str] = []
        count(self.samples, "samples", out)
        return out


class EWC(Regularizer):
    name = NAME
    state_groups = ("anchors", "fisher")

    def __init__(self, anchors: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], lam: float,
                 normalize: bool = False):
        self.anchors, self.lam = anchors, lam
        self.fisher = normalized(fisher) if normalize else fisher

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.lam / 2 * weighted_distance(model, self.anchors, self.fisher, self.name)

    @classmethod
    def build(cls, model: nn.Module, keep_batches: KeepBatches, lam: float = 1.0, **options: object) -> EWC:
        """`build` with the options as keywords (`EWC.build(model, keep, samples=8)`)."""
        return build(model, keep_batches, lam, keyword_options(Options, NAME, options))


def build(model: nn.Module, keep_batches: KeepBatches, lam: float, options: Options) -> EWC:
    """Anchor the trainable weights; estimate F on `options.samples` keep examples (or read it from fisher_path)."""
    check(setting_problems(lam, options), NAME)
    model = unwrap(model)
    params = trainable_parameters(model, NAME)
    fisher_path = options.fisher_path
    if fisher_path and Path(fisher_path).exists():
        fisher = load_fisher(fisher_path, params)
    else:
        fisher, used = estimate_fisher(model, params, keep_batches, options.samples)
        if fisher_path:
            save_fisher(fisher, fisher_path, used)
    return EWC(snapshot(params), fisher, lam, options.normalize)


def estimate_fisher(model: nn.Module, params: dict[str, nn.Parameter], keep_batches: KeepBatches,
                    samples: int) -> tuple[dict[str, torch.Tensor], int]:
    """Diagonal empirical Fisher: mean over `samples` keep examples of the squared per-example gradient.

    Returns (F, examples used): fewer than `samples` when the keep data is smaller.
    """
    names, tensors = list(params), list(params.values())
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device, count = device_of(model), 0
    with eval_mode(model):  # the Fisher of the deterministic network: no dropout noise in the gradients
        for example in examples(keep_batches()):
            loss = model(**to_device(example, device)).loss
            if not torch.isfinite(loss):
                continue
            # autograd.grad leaves p.grad untouched: building the regularizer never disturbs training state
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    fisher[n] += g.float().pow(2)
            count += 1
            if count == samples:
                break
    if count == 0:
        raise InstructuneError("regularizer 'ewc': the keep data has no example with completion tokens, so the "
                               "Fisher information cannot be estimated. Check the keep data and its template.")
    return {n: f / count for n, f in fisher.items()}, count


def normalized(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """F / mean(F) over every element of every tensor (a zero Fisher stays zero)."""
    total = sum(float(f.double().sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    mean = total / max(count, 1)
    return {n: f / mean for n, f in fisher.items()} if mean > 0 else fisher


def save_fisher(fisher: dict[str, torch.Tensor], path: str | Path, samples: int) -> None:

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({n: f.detach().contiguous().cpu() for n, f in fisher.items()}, str(path),
              metadata={"format": FISHER_FORMAT, "samples": str(samples)})


def load_fisher(path: str | Path, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Read a Fisher written by save_fisher; it must cover exactly the trainable parameters, same shapes."""
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("format") != FISHER_FORMAT:
            raise InstructuneError(f"ewc fisher_path {path} is not a Fisher file written by instructune. Point "
                                   "fisher_path to another file (it is computed and written there) or delete it.")
        fisher = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    wrong = sorted(set(params) ^ set(fisher))
    wrong += [n for n in params if n in fisher and fisher[n].shape != params[n].shape]
    if wrong:
        raise InstructuneError(
            f"ewc fisher_path {path} was computed for other trainable parameters ({len(wrong)} differ, e.g. "
            f"{wrong[0]}). Delete the file or set fisher_path to a new file to recompute it for this model and "
            "method.")
    return {n: fisher[n].float().to(params[n].device) for n in params}
