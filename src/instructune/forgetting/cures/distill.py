"""Self-distillation on replayed keep prompts: Learning without Forgetting (Li and Hoiem 2016).

Each penalty call takes the next keep batch (cycled) and matches the student's next-token distributions
to the teacher's at the completion positions C (labels != -100):

    penalty = lam * T^2 * 1/|C| sum_{t in C} KL( softmax(z_teacher_t / T) || softmax(z_student_t / T) )

T^2 keeps the gradient's size independent of the temperature (Hinton et al. 2015). The teacher runs
under no_grad, in eval mode, on the fly (caching its logits would cost vocab x tokens per batch).

The teacher is, by default, the model as it was before fine-tuning, without a second copy in memory:
- a peft model whose trainable weights are all adapter weights: the same model with adapters disabled
  (`model.disable_adapter()`), i.e. the base model;
- any other model: the same modules with the trainable weights swapped back to their build-time
  values (`torch.func.functional_call`), so only the trainable weights are stored twice, which for
  full fine-tuning is the size of a copy and for selective methods much less.
`teacher` may instead name or be another causal LM with the same tokenizer (e.g. a larger model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instructune.errors import InstructuneError
from instructune.forgetting.cures.base import (
    Cycle,
    KeepBatches,
    Regularizer,
    check,
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
)
from instructune.models import load_model

NAME = "distill"


@dataclass
class Options:
    temperature: float = 1.0
    """Softening T of both distributions (the penalty carries T^2, so its gradient's size does not depend on T)."""
    teacher: nn.Module | str | None = None
    """Another causal LM with the model's tokenizer (pack, folder or hub id) to distil from; null = the model's
    own original weights."""

    def problems(self) -> list[str]:
        out: list[str] = []
        positive(self.temperature, "temperature", out)
        if self.teacher is not None and not isinstance(self.teacher, (str, nn.Module)):
            out.append(f"teacher must be a model name or folder, got {self.teacher!r}")
        return out


class Distill(Regularizer):
    name = NAME
    state_groups = ("anchors",)

    def __init__(self, keep_batches: KeepBatches, lam: float, temperature: float = 1.0,
                 teacher: nn.Module | None = None, anchors: dict[str, torch.Tensor] | None = None):
        """Exactly one teacher: a separate `teacher` module, build-time `anchors`, or neither (peft adapters off)."""
        self.batches = Cycle(keep_batches, self.name)
        self.lam, self.temperature = lam, temperature
        self.teacher = teacher
        self.anchors = anchors or {}

    @property
    def teacher_kind(self) -> str:
        """Which teacher runs, for the run log."""
        if self.teacher is not None:
            return "a separate model"
        return "the original weights (kept at build time)" if self.anchors else "the base model (adapters disabled)"

    def penalty(self, model: nn.Module) -> torch.Tensor:
        model = unwrap(model)
        batch = to_device(next(self.batches), device_of(model))
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        with torch.no_grad():
            teacher_logits = self.teacher_logits(model, inputs)
        student_logits = model(**inputs).logits
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise InstructuneError(f"regularizer 'distill': the teacher predicts {teacher_logits.shape[-1]} tokens, "
                                   f"the model {student_logits.shape[-1]}. The teacher must share the model's "
                                   "tokenizer: leave `teacher` unset to distil from the original model.")
        kl = completion_kl(student_logits, teacher_logits, batch["labels"], self.temperature)
        return self.lam * self.temperature ** 2 * kl

    def teacher_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.teacher is not None:
            if device_of(self.teacher) != device_of(model):
                self.teacher.to(device_of(model))
            with eval_mode(self.teacher):
                return self.teacher(**inputs).logits
        with eval_mode(model):
            if not self.anchors:
                with model.disable_adapter():
                    return model(**inputs).logits
            params = dict(model.named_parameters())
            original = {n: on_device(self.anchors, n, params[n]) for n in self.anchors}
            return torch.func.functional_call(model, original, args=(), kwargs=inputs).logits

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "position": torch.tensor([self.batches.position])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        position = state.pop("position", None)
        super().load_state_dict(state)
        if position is not None:
            self.batches.seek(int(position.item()))  # the next penalty uses the batch it would have used

    @classmethod
    def build(cls, model: nn.Module, keep_batches: KeepBatches, lam: float = 1.0, **options: object) -> Distill:
        """`build` with the options as keywords (`Distill.build(model, keep, temperature=2.0)`)."""
        return build(model, keep_batches, lam, keyword_options(Options, NAME, options))


def build(model: nn.Module, keep_batches: KeepBatches, lam: float, options: Options) -> Distill:
    """Pick the teacher (see the module docstring); nothing runs until the first penalty call."""
    problems = setting_problems(lam, options)
    teacher, temperature = options.teacher, options.temperature
    if teacher is model:
        problems.append("teacher is the model being trained; leave teacher unset to distil from its "
                        "original weights")
    check(problems, NAME)
    model = unwrap(model)
    params = trainable_parameters(model, NAME)
    if teacher is not None:
        return Distill(keep_batches, lam, temperature, teacher=load_teacher(teacher))
    if adapters_only(model, params):
        return Distill(keep_batches, lam, temperature)
    return Distill(keep_batches, lam, temperature, anchors=snapshot(params))


def adapters_only(model: nn.Module, params: dict[str, nn.Parameter]) -> bool:
    """A peft model in which every trainable weight belongs to an adapter (so disabling adapters gives the base)."""
    adapters = set(getattr(model, "peft_config", None) or ())
    return (hasattr(model, "disable_adapter") and bool(adapters)
            and all(adapters & set(n.split(".")) for n in params))


def load_teacher(teacher: nn.Module | str) -> nn.Module:
    """The teacher module: loaded when named (pack, folder or hub id), otherwise the given one, not copied.

    It only ever runs under no_grad and is not in the optimiser, so it never changes.
    """
    if isinstance(teacher, str):
        teacher = load_model(teacher)[0].requires_grad_(False)
    return teacher


def completion_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) over the positions that predict a completion token.

    student, teacher: (B, T', V) with T' >= T (prompt tuning prepends virtual tokens; the last T
    positions are the real ones); labels: (B, T). Logits at t predict token t+1.
    """
    length = labels.shape[1]
    student, teacher = student[:, -length:], teacher[:, -length:]
    mask = labels[:, 1:] != -100  # (B, T-1)
    if not mask.any():
        return student.new_zeros((), dtype=torch.float32)
    s = F.log_softmax(student[:, :-1][mask].float() / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher[:, :-1][mask].float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean()
